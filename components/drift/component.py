from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def drift(
    features: Input[Dataset],
    model: str,
    registry_uri: str,
    force: str,
    share_shift: float,
    centroid_shift: float,
    uncovered_distance: float,
    uncovered_share: float,
    latency_change: float,
    weights_uri: str,
    settings: str,
    output_uri: str,
    run_name: str,
    decision: Output[Artifact],
    metrics: Output[Metrics],
) -> str:
    """Compare today's fleet, the model, its weights and the settings with the published entry's: "retrain" or "skip"."""
    arguments = dict(locals())  # every parameter above, by name
    from hdap.stages.step import run_step

    return "retrain" if run_step(stage="drift", arguments=arguments)["retrain"] else "skip"
