from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def search(
    surrogates: Input[Model],
    features: Input[Dataset],
    model: str,
    input_shape: str,
    dataset: str,
    dataset_uri: str,
    weights_uri: str,
    mean: str,
    std: str,
    channel_order: str,
    train_images: int,
    validation: str,
    mode: str,
    objective: str,
    targets: str,
    strengths: str,
    quantized_point: str,
    pretrain_epochs: int,
    epochs: int,
    finetune_epochs: int,
    granule: int,
    learning_rate: float,
    accuracy_tolerance: float,
    truth_uri: str,
    seed: int,
    device: str,
    output_uri: str,
    run_name: str,
    architecture: Output[Model],
    front: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Joint pruning + mixed-precision search against the fleet-weighted latency: a Pareto front and the chosen architecture."""
    arguments = dict(locals())  # every parameter above, by name
    from hdap.stages.step import run_step

    run_step(stage="search", arguments=arguments)
