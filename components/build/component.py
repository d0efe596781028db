from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import GPU_STEP_IMAGE


@dsl.component(base_image=GPU_STEP_IMAGE, install_kfp_package=False)
def build(
    model: Input[Model],
    surrogates: Input[Model],
    features: Input[Dataset],
    clusters: Input[Artifact],
    assignments: Input[Dataset],
    front: Input[Artifact],
    dataset: str,
    dataset_uri: str,
    truth_uri: str,
    registry_uri: str,
    accuracy_tolerance: float,
    tensorrt: str,
    threads: int,
    seed: int,
    output_uri: str,
    run_name: str,
    engines: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """QDQ ONNX export, ONNX Runtime (and TensorRT where a GPU is) builds and measurements, quality gate, registry entry, report."""
    from hdap.steps import build_step

    results = build_step(
        model.path, surrogates.path, features.path, clusters.path, assignments.path, front.path, dataset, dataset_uri,
        truth_uri, registry_uri, accuracy_tolerance, tensorrt, threads, seed, output_uri, run_name, engines.path, report.path,
    )
    for name, value in results.items():
        metrics.log_metric(name, value)
