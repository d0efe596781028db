"""The fine-tune component, run locally by kfp.local on a searched ResNet-20 for digits."""

from kfp import dsl, local

from components.finetune import finetune
from hdap.compress.finetune import load_finetuned
from hdap.stages.finetune import FinetuneSummary
from tests.fixtures import searched_resnet20


def test_finetune_component_writes_a_model_that_reloads_and_a_checkpoint(store_env, object_store, bucket, tmp_path):
    spec, _ = searched_resnet20(tmp_path / "search", epochs=2)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def finetune_only() -> dsl.Model:
        architecture = dsl.importer(artifact_uri=str(tmp_path / "search"), artifact_class=dsl.Model)
        return finetune(architecture=architecture.output, epochs=1, learning_rate=0.01, dataset="digits", dataset_uri="", seed=0, device="cpu",
                        output_uri=f"s3://{bucket}/runs", run_name="r1").outputs["model"]

    task = finetune_only()
    model, reloaded, amax = load_finetuned(task.output.path)
    assert reloaded.to_json() == spec.to_json()
    assert amax and all(v > 0 for v in amax.values())
    summary = FinetuneSummary.load(f"{task.output.path}/summary.json")
    assert len(summary.per_class_after) == 10 and summary.epochs == 1
    assert object_store.exists(f"s3://{bucket}/runs/r1/finetune/checkpoint.pt")
    assert object_store.exists(f"s3://{bucket}/runs/r1/finetune/weights.pt")
