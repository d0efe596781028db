"""Compile the pipeline to Kubeflow's IR YAML."""

from pathlib import Path

from kfp import compiler

from pipelines.hdap_pipeline import hdap_pipeline


def compile_pipeline(output: Path) -> Path:
    compiler.Compiler().compile(pipeline_func=hdap_pipeline, package_path=str(output))
    return output
