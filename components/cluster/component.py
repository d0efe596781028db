from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def cluster(
    features: Input[Dataset],
    k: int,
    k_min: int,
    k_max: int,
    seed: int,
    cpu_states: str,
    output_uri: str,
    run_name: str,
    assignments: Output[Dataset],
    clusters: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """k-means over the devices' performance features (k=0: chosen by silhouette), or a CPU fleet's declared states; a representative per cluster.
    Outlying devices are set aside (counted in the metrics, a reason per device in the assignments) and never define a cluster."""
    arguments = dict(locals())  # every parameter above, by name
    from hdap.stages.step import run_step

    run_step(stage="cluster", arguments=arguments)
