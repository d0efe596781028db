"""The model zoo, and a model's prunable layers as the latency model sees them."""

from hdap.models.layers import prunable_layers
from hdap.models.zoo import MODELS, build_model, check_input_shape

__all__ = ["MODELS", "build_model", "check_input_shape", "prunable_layers"]
