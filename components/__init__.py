"""Kubeflow components: lightweight Python components, one folder each, no logic of their own.

Each body imports hdap and calls its step in `hdap.steps`. Only lightweight components run
under kfp.local's SubprocessRunner, so on a cluster they run in the step image named by
HDAP_STEP_IMAGE at compile time (built from images/Dockerfile.cpu, with hdap installed).
"""

import os

STEP_IMAGE = os.environ.get("HDAP_STEP_IMAGE", "hdap-step:0.1.0")
# The build step's image: with TensorRT and CUDA (images/Dockerfile.gpu) where engines are built.
GPU_STEP_IMAGE = os.environ.get("HDAP_GPU_STEP_IMAGE", STEP_IMAGE)
