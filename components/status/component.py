from kfp import dsl

from components import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def run_status(status: dsl.PipelineTaskFinalStatus, output_uri: str, run_name: str) -> str:
    """The exit handler: the run's final status to <output_uri>/<run name>/status.json, whatever happened; returns the run's name."""
    from hdap.run_status import record_run_status

    record_run_status(output_uri, run_name, status.state, status.error_message or "")
    return run_name
