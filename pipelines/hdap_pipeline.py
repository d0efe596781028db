"""The hdap pipeline: store -> ingest -> drift gate -> [cluster -> surrogate -> search -> fine-tune -> build] -> registry.

The stages in brackets run only when the drift gate says "retrain" (the fleet, the model, its
weights or the settings changed since the published entry, or nothing is published yet); a run
with nothing to do ends green. An exit handler records every run's final status in the store.

Every parameter is one setting of a stage config (`hdap.stages`), named as `hdap run` names it:
settings several stages share have their own name (`model`, `seed`), the others their stage's
prefix (`search_targets`, `cluster_k`). Defaults are read from the configs (`D`), so they are
written once; `hdap run --help` explains each.
"""

import os
from dataclasses import dataclass

from kfp import dsl, kubernetes

from components.build import build
from components.cluster import cluster
from components.drift import drift
from components.finetune import finetune
from components.ingest import ingest
from components.search import search
from components.status import run_status
from components.surrogate import surrogate
from hdap.stages import pipeline_defaults, pipeline_settings, stage
from hdap.stages.drift import lineage_settings
from hdap.stages.search import SearchMode

D = pipeline_defaults()
RUN = dsl.PIPELINE_JOB_NAME_PLACEHOLDER  # the run's name: every stage writes under <output_uri>/<run name>/

# The Kubernetes secret holding the object store's settings (see manifests/).
STORE_SECRET = "hdap-s3"
STORE_SECRET_KEYS = {
    "endpoint": "HDAP_S3_ENDPOINT",
    "accesskey": "HDAP_S3_ACCESS_KEY",
    "secretkey": "HDAP_S3_SECRET_KEY",
    "secure": "HDAP_S3_SECURE",
}

# The registry manifests' signing key (hdap registry keygen), for the build step only; optional: without it
# entries are published unsigned (and verify as "unsigned", never as valid).
SIGNING_SECRET = "hdap-signing"
SIGNING_SECRET_KEYS = {"private-key": "HDAP_SIGNING_KEY"}

# Where the build step runs on a cluster, read at compile time (`hdap compile --build-accelerator ...`):
# engines are not portable between GPUs or TensorRT versions, so the step asks for a GPU and can
# be pinned to nodes of the target SKU (a node label key=value).
BUILD_ACCELERATOR = os.environ.get("HDAP_BUILD_ACCELERATOR", "")  # e.g. nvidia.com/gpu; empty: CPU only
BUILD_NODE_LABEL = os.environ.get("HDAP_BUILD_NODE_LABEL", "")  # e.g. nvidia.com/gpu.product=Jetson-Xavier-NX
# A toleration for the build step (key=value:Effect), so it can run on tainted nodes of the target SKU.
BUILD_TOLERATION = os.environ.get("HDAP_BUILD_TOLERATION", "")
# The search and the fine-tune train: on a cluster with GPUs they ask for one (`hdap compile --train-accelerator`).
TRAIN_ACCELERATOR = os.environ.get("HDAP_TRAIN_ACCELERATOR", "")  # e.g. nvidia.com/gpu; empty: CPU only


@dataclass(frozen=True)
class StepPolicy:
    """How a step runs on a cluster: what it asks of a node, and whether Kubeflow may reuse a result."""

    cpu: str  # requested; the limit is twice that
    memory: str  # requested; the limit is twice that
    cached: bool  # False for a step that reads store prefixes whose contents change between runs with the same parameters


STEPS = {
    "ingest": StepPolicy("1", "2G", cached=False),  # the telemetry prefix grows: a cached ingest replays last week's fleet
    "drift": StepPolicy("1", "2G", cached=False),  # reads the registry, which each publish changes
    "cluster": StepPolicy("1", "2G", cached=True),  # a function of the ingested features
    "surrogate": StepPolicy("1", "2G", cached=False),  # devices upload new profiles under the same profiles_uri
    "search": StepPolicy("2", "4G", cached=True),  # the surrogates, the dataset and the weights, all by content
    "finetune": StepPolicy("2", "4G", cached=True),
    "build": StepPolicy("2", "4G", cached=False),  # reads and writes the registry, times this node
}
# Every step talks to the object store: a store that blips should cost a retry, not the run.
RETRY = dict(num_retries=3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="10m")


def step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """A stage's task: its display name, resources, caching and retries, and the store's settings from the secret."""
    policy = STEPS[name]
    task.set_display_name(stage(name).title)
    task.set_cpu_request(policy.cpu).set_memory_request(policy.memory)
    task.set_cpu_limit(_twice(policy.cpu)).set_memory_limit(_twice(policy.memory))
    task.set_caching_options(enable_caching=policy.cached).set_retry(**RETRY)
    return kubernetes.use_secret_as_env(task, secret_name=STORE_SECRET, secret_key_to_env=STORE_SECRET_KEYS)


def status_step(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The exit handler's task: small, never cached (it records this run), with the store's settings."""
    task.set_display_name("record the run's status").set_cpu_request("100m").set_memory_request("256M")
    task.set_cpu_limit("200m").set_memory_limit("512M")
    task.set_caching_options(enable_caching=False).set_retry(**RETRY)
    return kubernetes.use_secret_as_env(task, secret_name=STORE_SECRET, secret_key_to_env=STORE_SECRET_KEYS)


def _twice(quantity: str) -> str:
    number = quantity.rstrip("GMKim")
    return f"{2 * int(number)}{quantity[len(number):]}"


def on_build_nodes(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, secret_name=SIGNING_SECRET, secret_key_to_env=SIGNING_SECRET_KEYS, optional=True)
    if BUILD_ACCELERATOR:
        task.set_accelerator_type(BUILD_ACCELERATOR).set_accelerator_limit(1)
    if BUILD_NODE_LABEL:
        key, _, value = BUILD_NODE_LABEL.partition("=")
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if BUILD_TOLERATION:
        key_value, _, effect = BUILD_TOLERATION.partition(":")
        key, _, value = key_value.partition("=")
        kubernetes.add_toleration(task, key=key, operator="Equal" if value else "Exists", value=value or None, effect=effect or None)
    return task


def on_training_nodes(task: dsl.PipelineTask) -> dsl.PipelineTask:
    if TRAIN_ACCELERATOR:
        task.set_accelerator_type(TRAIN_ACCELERATOR).set_accelerator_limit(1)
    return task


def hdap_pipeline(
    telemetry_uri: str = D["telemetry_uri"],
    sku: str = D["sku"],
    model: str = D["model"],
    input_shape: str = D["input_shape"],
    dataset: str = D["dataset"],
    dataset_uri: str = D["dataset_uri"],
    accuracy_tolerance: float = D["accuracy_tolerance"],
    seed: int = D["seed"],
    device: str = D["device"],
    output_uri: str = D["output_uri"],
    registry_uri: str = D["registry_uri"],
    truth_uri: str = D["truth_uri"],
    profiles_uri: str = D["profiles_uri"],
    cpu_states: str = D["cpu_states"],
    ingest_as_of: str = D["ingest_as_of"],
    drift_force: str = D["drift_force"],
    drift_share_shift: float = D["drift_share_shift"],
    drift_centroid_shift: float = D["drift_centroid_shift"],
    drift_uncovered_distance: float = D["drift_uncovered_distance"],
    drift_uncovered_share: float = D["drift_uncovered_share"],
    drift_latency_change: float = D["drift_latency_change"],
    cluster_k: int = D["cluster_k"],
    cluster_k_min: int = D["cluster_k_min"],
    cluster_k_max: int = D["cluster_k_max"],
    surrogate_backend: str = D["surrogate_backend"],
    surrogate_samples_per_layer: int = D["surrogate_samples_per_layer"],
    search_mode: str = D["search_mode"],
    search_objective: str = D["search_objective"],
    search_targets: str = D["search_targets"],
    search_strengths: str = D["search_strengths"],
    search_quantized_point: str = D["search_quantized_point"],
    search_pretrain_epochs: int = D["search_pretrain_epochs"],
    search_epochs: int = D["search_epochs"],
    search_finetune_epochs: int = D["search_finetune_epochs"],
    search_granule: int = D["search_granule"],
    search_learning_rate: float = D["search_learning_rate"],
    search_weights_uri: str = D["search_weights_uri"],
    search_mean: str = D["search_mean"],
    search_std: str = D["search_std"],
    search_channel_order: str = D["search_channel_order"],
    search_train_images: int = D["search_train_images"],
    search_validation: str = D["search_validation"],
    finetune_epochs: int = D["finetune_epochs"],
    finetune_learning_rate: float = D["finetune_learning_rate"],
    build_tensorrt: str = D["build_tensorrt"],
    build_min_measured_speedup: float = D["build_min_measured_speedup"],
    build_mlflow_uri: str = D["build_mlflow_uri"],
    build_mlflow_experiment: str = D["build_mlflow_experiment"],
    build_model_registry_uri: str = D["build_model_registry_uri"],
) -> str:
    parameters = dict(locals())  # every parameter, by name: the drift gate compares the lineage ones with the published entry's
    status_task = status_step(run_status(output_uri=output_uri, run_name=RUN))
    with dsl.ExitHandler(status_task, name="run"):
        ingest_task = step(ingest(telemetry_uri=telemetry_uri, sku=sku, as_of=ingest_as_of, output_uri=output_uri, run_name=RUN),
                           "ingest")
        features = ingest_task.outputs["features"]
        drift_task = step(drift(
            features=features, model=model, registry_uri=registry_uri, force=drift_force, share_shift=drift_share_shift,
            centroid_shift=drift_centroid_shift, uncovered_distance=drift_uncovered_distance, uncovered_share=drift_uncovered_share,
            latency_change=drift_latency_change, weights_uri=search_weights_uri,
            settings="\n".join(f"{name}={parameters[name]}" for name in lineage_settings()), output_uri=output_uri,
            run_name=RUN), "drift")
        with dsl.If(drift_task.outputs["Output"] == "retrain", name="retrain"):
            cluster_task = step(cluster(features=features, k=cluster_k, k_min=cluster_k_min, k_max=cluster_k_max, seed=seed,
                                        cpu_states=cpu_states, output_uri=output_uri, run_name=RUN), "cluster")
            surrogate_task = step(surrogate(
                features=features, clusters=cluster_task.outputs["clusters"], model=model, input_shape=input_shape,
                backend=surrogate_backend, samples_per_layer=surrogate_samples_per_layer, profiles_uri=profiles_uri,
                truth_uri=truth_uri, seed=seed, output_uri=output_uri, run_name=RUN), "surrogate")
            search_task = step(search(
                surrogates=surrogate_task.outputs["surrogates"], features=features, model=model, input_shape=input_shape,
                dataset=dataset, dataset_uri=dataset_uri, weights_uri=search_weights_uri, mean=search_mean, std=search_std,
                channel_order=search_channel_order, train_images=search_train_images, validation=search_validation,
                mode=search_mode, objective=search_objective, targets=search_targets, strengths=search_strengths,
                quantized_point=search_quantized_point,
                pretrain_epochs=search_pretrain_epochs, epochs=search_epochs, finetune_epochs=search_finetune_epochs,
                granule=search_granule, learning_rate=search_learning_rate, accuracy_tolerance=accuracy_tolerance,
                truth_uri=truth_uri, seed=seed, device=device, output_uri=output_uri, run_name=RUN), "search")
            on_training_nodes(search_task)
            with dsl.If(search_mode != SearchMode.PER_CLUSTER.value, name="one-architecture"):  # per-cluster stops after the search
                finetune_task = step(finetune(
                    architecture=search_task.outputs["architecture"], epochs=finetune_epochs, learning_rate=finetune_learning_rate,
                    dataset=dataset, dataset_uri=dataset_uri, seed=seed, device=device, output_uri=output_uri, run_name=RUN),
                    "finetune")
                on_training_nodes(finetune_task)
                on_build_nodes(step(build(
                    model=finetune_task.outputs["model"], surrogates=surrogate_task.outputs["surrogates"], features=features,
                    clusters=cluster_task.outputs["clusters"], assignments=cluster_task.outputs["assignments"],
                    front=search_task.outputs["front"], drift=drift_task.outputs["decision"], tensorrt=build_tensorrt,
                    cpu_states=cpu_states, min_measured_speedup=build_min_measured_speedup, registry_uri=registry_uri,
                    mlflow_uri=build_mlflow_uri, mlflow_experiment=build_mlflow_experiment,
                    model_registry_uri=build_model_registry_uri,
                    accuracy_tolerance=accuracy_tolerance, dataset=dataset, dataset_uri=dataset_uri, truth_uri=truth_uri,
                    seed=seed, output_uri=output_uri, run_name=RUN), "build"))
    return status_task.output  # the run's name


# Each parameter's description in the Kubeflow UI is its setting's help (kfp reads them from the docstring).
hdap_pipeline.__doc__ = "The hdap pipeline.\n\nArgs:\n" + "\n".join(f"    {e.name}: {e.help}" for e in pipeline_settings())
hdap_pipeline = dsl.pipeline(
    name="hdap",
    description="Compress a DNN for a fleet of identical edge devices: ingest fleet telemetry, cluster the devices, "
    "learn each cluster's latency surrogate, search channels and precisions against the fleet-weighted latency, "
    "fine-tune quantization-aware, build and publish. Each parameter is explained beside it, and by `hdap run --help`.",
)(hdap_pipeline)
