from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def finetune(
    architecture: Input[Model],
    epochs: int,
    learning_rate: float,
    dataset: str,
    dataset_uri: str,
    seed: int,
    device: str,
    output_uri: str,
    run_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Quantization-aware fine-tune of the searched architecture (pruned physically), distilling the uncompressed model."""
    arguments = dict(locals())  # every parameter above, by name
    from hdap.stages.step import run_step

    run_step(stage="finetune", arguments=arguments)
