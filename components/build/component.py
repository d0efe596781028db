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
    drift: Input[Artifact],
    tensorrt: str,
    cpu_states: str,
    min_measured_speedup: float,
    registry_uri: str,
    mlflow_uri: str,
    mlflow_experiment: str,
    model_registry_uri: str,
    accuracy_tolerance: float,
    dataset: str,
    dataset_uri: str,
    truth_uri: str,
    seed: int,
    output_uri: str,
    run_name: str,
    engines: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """QDQ ONNX export, ONNX Runtime (and TensorRT where a GPU is) builds and measurements, quality gate, registry entry, report."""
    arguments = dict(locals())  # every parameter above, by name
    from hdap.stages.step import run_step

    run_step(stage="build", arguments=arguments)
