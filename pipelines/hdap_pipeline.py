"""The hdap pipeline: store -> ingest -> cluster -> surrogate -> search -> fine-tune -> build -> registry."""

import os

from kfp import dsl, kubernetes
from kfp.dsl import Artifact

from components.build import build
from components.cluster import cluster
from components.finetune import finetune
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


# Where the build step runs on a cluster, read at compile time (`hdap compile --build-accelerator ...`):
# engines are not portable between GPUs or TensorRT versions, so the step asks for a GPU and can
# be pinned to nodes of the target SKU (a node label key=value).
BUILD_ACCELERATOR = os.environ.get("HDAP_BUILD_ACCELERATOR", "")  # e.g. nvidia.com/gpu; empty: CPU only
BUILD_NODE_LABEL = os.environ.get("HDAP_BUILD_NODE_LABEL", "")  # e.g. nvidia.com/gpu.product=Jetson-Xavier-NX


def with_store_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    return kubernetes.use_secret_as_env(task, secret_name=STORE_SECRET, secret_key_to_env=STORE_SECRET_KEYS)


def on_build_nodes(task: dsl.PipelineTask) -> dsl.PipelineTask:
    if BUILD_ACCELERATOR:
        task.set_accelerator_type(BUILD_ACCELERATOR).set_accelerator_limit(1)
    if BUILD_NODE_LABEL:
        key, _, value = BUILD_NODE_LABEL.partition("=")
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    return task


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
    search_epochs: int = 20,
    finetune_epochs: int = 10,
    granule: int = 8,
    accuracy_tolerance: float = 0.5,
    qat_epochs: int = 8,
    qat_learning_rate: float = 0.01,
    registry_uri: str = "s3://hdap/registry",
    tensorrt: str = "auto",
    onnxruntime_threads: int = 1,
) -> Artifact:
    """k=0 chooses the number of clusters in [k_min, k_max]; as_of (ISO time) fixes "now" for the
    future-timestamp check, empty means the clock. Representatives are profiled from their uploaded
    profiles (profiles_uri/<device id>/profile.parquet) or with profiling_backend (simulated |
    onnxruntime | tensorrt); truth_uri names a simulated fleet's hidden truth. The search trains
    `model` on `dataset` (digits | cifar10 | imagefolder, the last two from dataset_uri) once per
    cost target (a fraction of the uncompressed model's cost; penalty strengths, when given,
    replace the targets); search_mode is fleet | nominal | per-cluster, objective latency | memory. The chosen
    architecture is fine-tuned quantization-aware for qat_epochs, exported as QDQ ONNX, built for ONNX Runtime
    (and TensorRT: auto | off | required) and, if its accuracy stays within accuracy_tolerance points of the
    uncompressed model's, published to <registry_uri>/<model>/<run name>/ (per-cluster mode stops after the
    search). Outputs go to <output_uri>/<run name>/."""
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
    search_task = with_store_credentials(
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
    with dsl.If(search_mode != "per-cluster", name="one-architecture"):
        finetune_task = with_store_credentials(
            finetune(
                architecture=search_task.outputs["architecture"],
                dataset=dataset,
                dataset_uri=dataset_uri,
                epochs=qat_epochs,
                learning_rate=qat_learning_rate,
                seed=seed,
                output_uri=output_uri,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            )
        ).set_display_name("quantization-aware fine-tune").set_cpu_limit("4").set_memory_limit("8G").set_retry(2)
        on_build_nodes(with_store_credentials(
            build(
                model=finetune_task.outputs["model"],
                surrogates=surrogate_task.outputs["surrogates"],
                features=ingest_task.outputs["features"],
                clusters=cluster_task.outputs["clusters"],
                assignments=cluster_task.outputs["assignments"],
                front=search_task.outputs["front"],
                dataset=dataset,
                dataset_uri=dataset_uri,
                truth_uri=truth_uri,
                registry_uri=registry_uri,
                accuracy_tolerance=accuracy_tolerance,
                tensorrt=tensorrt,
                threads=onnxruntime_threads,
                seed=seed,
                output_uri=output_uri,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            )
        ).set_display_name("export + build + publish"))
    return cluster_task.outputs["clusters"]
