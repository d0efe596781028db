"""The training path on a GPU: these run where CUDA exists and skip, saying so, elsewhere."""

from __future__ import annotations

import pytest
import torch

from hdap.compress.search import run_search
from hdap.compress.training import training_device
from hdap.data import DataConfig, load_dataset
from hdap.errors import HdapError
from hdap.stages.search import SearchConfig
from tests.test_deploy import finetuned  # noqa: F401 - the fixture, shared
from tests.test_search import DIGITS, two_cluster_fleet

NO_CUDA = "no CUDA device is visible on this machine (the GPU path runs where one is)"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


def test_asking_for_cuda_without_a_gpu_is_one_sentence() -> None:
    if torch.cuda.is_available():
        assert training_device("cuda").type == "cuda"
        return
    assert training_device("auto").type == "cpu"
    with pytest.raises(HdapError, match="device=cuda but no CUDA device is visible here"):
        training_device("cuda")


@needs_cuda
def test_the_search_runs_on_the_gpu_and_its_results_load_on_the_cpu() -> None:
    dataset = load_dataset(DataConfig("digits", input_shape=DIGITS))
    fleet = two_cluster_fleet("resnet20", samples_per_layer=8)
    config = SearchConfig(targets=(0.5,), pretrain_epochs=2, epochs=2, finetune_epochs=1, device="cuda")
    result = run_search(config, dataset, fleet)
    assert result.baseline_validation_accuracy > 50
    assert all(v.device.type == "cpu" for v in result.baseline_weights.values())
    assert all(v.device.type == "cpu" for v in result.chosen[0].weights.values())
    assert result.chosen[0].fleet_latency_ms < result.baseline_fleet_latency_ms


@needs_cuda
def test_the_fine_tune_trains_on_the_gpu_and_returns_a_cpu_model(finetuned) -> None:
    from hdap.compress.finetune import quantization_aware_finetune
    from hdap.stages.finetune import FinetuneConfig

    _, directory, spec, data, _ = finetuned
    weights, teacher = torch.load(directory / "architecture.weights.pt"), torch.load(directory / "uncompressed.weights.pt")
    result = quantization_aware_finetune(spec, weights, teacher, data, FinetuneConfig(epochs=1, device="cuda"))
    assert next(result.model.parameters()).device.type == "cpu" and result.accuracy_after > 50
