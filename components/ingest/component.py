from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def ingest(
    telemetry_uri: str,
    sku: str,
    as_of: str,
    output_uri: str,
    run_name: str,
    features: Output[Dataset],
    quarantine: Output[Dataset],
    metrics: Output[Metrics],
):
    """Validate every telemetry object under telemetry_uri; per-device features, bad rows quarantined with reasons,
    objects not read (corrupt, unparseable, another format) listed in the summary and counted in the metrics."""
    arguments = dict(locals())  # every parameter above, by name
    from hdap.stages.step import run_step

    run_step(stage="ingest", arguments=arguments)
