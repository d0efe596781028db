from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def search(
    surrogates: Input[Model],
    features: Input[Dataset],
    dataset: str,
    dataset_uri: str,
    model: str,
    input_shape: str,
    mode: str,
    objective: str,
    targets: str,
    strengths: str,
    pretrain_epochs: int,
    search_epochs: int,
    finetune_epochs: int,
    granule: int,
    accuracy_tolerance: float,
    truth_uri: str,
    seed: int,
    output_uri: str,
    run_name: str,
    architecture: Output[Model],
    front: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Joint pruning + mixed-precision search against the fleet-weighted latency: a Pareto front and the chosen architecture."""
    from hdap.steps import search_step

    results = search_step(
        surrogates.path, features.path, dataset, dataset_uri, model, input_shape, mode, objective, targets, strengths,
        pretrain_epochs, search_epochs, finetune_epochs, granule, accuracy_tolerance, truth_uri, seed, output_uri,
        run_name, architecture.path, front.path, report.path,
    )
    for name, value in results.items():
        metrics.log_metric(name, value)
