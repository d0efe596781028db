from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def finetune(
    architecture: Input[Model],
    dataset: str,
    dataset_uri: str,
    epochs: int,
    learning_rate: float,
    seed: int,
    output_uri: str,
    run_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Quantization-aware fine-tune of the searched architecture (pruned physically), distilling the uncompressed model."""
    from hdap.steps import finetune_step

    results = finetune_step(architecture.path, dataset, dataset_uri, epochs, learning_rate, seed, output_uri, run_name, model.path)
    for name, value in results.items():
        metrics.log_metric(name, value)
