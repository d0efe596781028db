"""Kubeflow components: lightweight Python components, one folder each, no logic of their own.

A component's signature lists its stage's settings (the fields of `hdap.stages.<stage>`'s config),
where the run writes (`output_uri`, `run_name`) and its artifacts; its body hands every parameter,
by name (`dict(locals())`, taken before anything else is defined), to `hdap.stages.step.run_step`. The settings have no defaults here: the pipeline passes
every one, and their defaults live in the stage configs (a test holds the two together). Only
lightweight components run under kfp.local's SubprocessRunner, so on a cluster they run in the
step image named by HDAP_STEP_IMAGE at compile time (built from images/Dockerfile.cpu).
"""

import os

STEP_IMAGE = os.environ.get("HDAP_STEP_IMAGE", "hdap-step:0.1.0")
# The build step's image: with TensorRT and CUDA (images/Dockerfile.gpu) where engines are built.
GPU_STEP_IMAGE = os.environ.get("HDAP_GPU_STEP_IMAGE", STEP_IMAGE)
