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
    profiles_uri: str,
    truth_uri: str,
    seed: int,
    output_uri: str,
    run_name: str,
    surrogates: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Profile each cluster's representative and fit its differentiable latency surrogate."""
    arguments = dict(locals())  # every parameter above, by name
    from hdap.stages.step import run_step

    run_step(stage="surrogate", arguments=arguments)
