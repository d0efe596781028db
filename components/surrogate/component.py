from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def surrogate(
    features: Input[Dataset],
    clusters: Input[Artifact],
    model: str,
    input_shape: str,
    backend: str,
    samples_per_layer: int,
    truth_uri: str,
    profiles_uri: str,
    seed: int,
    output_uri: str,
    run_name: str,
    surrogates: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Profile each cluster's representative and fit its differentiable latency surrogate."""
    from hdap.steps import surrogate_step

    results = surrogate_step(
        features.path, clusters.path, model, input_shape, backend, samples_per_layer, truth_uri, profiles_uri,
        seed, output_uri, run_name, surrogates.path, report.path,
    )
    for name, value in results.items():
        metrics.log_metric(name, value)
