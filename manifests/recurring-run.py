"""Schedule hdap as a recurring run (weekly re-clustering as the fleet changes).

    python manifests/recurring-run.py --host https://<kubeflow>/pipeline --experiment hdap

Uses the kfp client: compile first (`hdap compile --image <registry>/hdap-step:0.1.0`).
"""

import argparse

import kfp

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--host", required=True)
parser.add_argument("--experiment", default="hdap")
parser.add_argument("--package", default="hdap-pipeline.yaml")
parser.add_argument("--cron", default="0 0 3 * * 1", help="Kubeflow cron (with seconds): Mondays 03:00")
parser.add_argument("--telemetry-uri", default="s3://hdap/telemetry/jetson-xavier-nx")
args = parser.parse_args()

client = kfp.Client(host=args.host)
experiment = client.create_experiment(args.experiment)
job = client.create_recurring_run(
    experiment_id=experiment.experiment_id,
    job_name="hdap-weekly",
    cron_expression=args.cron,
    pipeline_package_path=args.package,
    params={"telemetry_uri": args.telemetry_uri},
    max_concurrency=1,
)
print(f"recurring run {job.recurring_run_id} created")
