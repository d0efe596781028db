"""The hdap pipeline: store -> ingest -> cluster -> surrogate -> search (-> fine-tune -> build)."""

from kfp import dsl, kubernetes
from kfp.dsl import Artifact

from components.cluster import cluster
from components.ingest import ingest
from components.search import search
from components.surrogate import surrogate

# The Kubernetes secret holding the object store's settings (see manifests/).
STORE_SECRET = "hdap-s3"
STORE_SECRET_KEYS = {
    "endpoint": "HDAP_S3_ENDPOINT",
    "accesskey": "HDAP_S3_ACCESS_KEY",
    "secretkey": "HDAP_S3_SECRET_KEY",
    "secure": "HDAP_S3_SECURE",
}


def with_store_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    return kubernetes.use_secret_as_env(task, secret_name=STORE_SECRET, secret_key_to_env=STORE_SECRET_KEYS)


@dsl.pipeline(
    name="hdap",
    description="Compress a DNN for a fleet of identical edge devices: ingest fleet telemetry, cluster the devices, "
    "learn each cluster's latency surrogate, and search channels and precisions against the fleet-weighted latency.",
)
def hdap_pipeline(
    telemetry_uri: str = "s3://hdap/telemetry/jetson-xavier-nx",
    sku: str = "jetson-xavier-nx",
    k: int = 0,
    k_min: int = 2,
    k_max: int = 8,
    seed: int = 0,
    output_uri: str = "s3://hdap/runs",
    as_of: str = "",
    model: str = "resnet20",
    input_shape: str = "1,8,8",
    profiling_backend: str = "simulated",
    samples_per_layer: int = 30,
    truth_uri: str = "",
    profiles_uri: str = "s3://hdap/profiles",
    dataset: str = "digits",
    dataset_uri: str = "",
    search_mode: str = "fleet",
    objective: str = "latency",
    targets: str = "0.8,0.65,0.5,0.4,0.3,0.2",
    strengths: str = "",
    pretrain_epochs: int = 15,
    search_epochs: int = 10,
    finetune_epochs: int = 10,
    granule: int = 8,
    accuracy_tolerance: float = 0.5,
) -> Artifact:
    """k=0 chooses the number of clusters in [k_min, k_max]; as_of (ISO time) fixes "now" for the
    future-timestamp check, empty means the clock. Representatives are profiled from their uploaded
    profiles (profiles_uri/<device id>/profile.parquet) or with profiling_backend (simulated |
    onnxruntime | tensorrt); truth_uri names a simulated fleet's hidden truth. The search trains
    `model` on `dataset` (digits | cifar10 | imagefolder, the last two from dataset_uri) once per
    cost target (a fraction of the uncompressed model's cost; penalty strengths, when given,
    replace the targets); search_mode is fleet | nominal | per-cluster, objective latency | memory. Outputs go
    to <output_uri>/<run name>/."""
    ingest_task = with_store_credentials(
        ingest(
            telemetry_uri=telemetry_uri,
            sku=sku,
            as_of=as_of,
            output_uri=output_uri,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
    ).set_display_name("ingest telemetry")
    cluster_task = with_store_credentials(
        cluster(
            features=ingest_task.outputs["features"],
            k=k,
            k_min=k_min,
            k_max=k_max,
            seed=seed,
            output_uri=output_uri,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
    ).set_display_name("cluster devices")
    surrogate_task = with_store_credentials(
        surrogate(
            features=ingest_task.outputs["features"],
            clusters=cluster_task.outputs["clusters"],
            model=model,
            input_shape=input_shape,
            backend=profiling_backend,
            samples_per_layer=samples_per_layer,
            truth_uri=truth_uri,
            profiles_uri=profiles_uri,
            seed=seed,
            output_uri=output_uri,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
    ).set_display_name("latency surrogates")
    with_store_credentials(
        search(
            surrogates=surrogate_task.outputs["surrogates"],
            features=ingest_task.outputs["features"],
            dataset=dataset,
            dataset_uri=dataset_uri,
            model=model,
            input_shape=input_shape,
            mode=search_mode,
            objective=objective,
            targets=targets,
            strengths=strengths,
            pretrain_epochs=pretrain_epochs,
            search_epochs=search_epochs,
            finetune_epochs=finetune_epochs,
            granule=granule,
            accuracy_tolerance=accuracy_tolerance,
            truth_uri=truth_uri,
            seed=seed,
            output_uri=output_uri,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
    ).set_display_name("prune + precision search").set_cpu_limit("4").set_memory_limit("8G")
    return cluster_task.outputs["clusters"]
