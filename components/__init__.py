"""Kubeflow components: lightweight Python components, one folder each, no logic of their own.

Each body imports hdap and calls its step in `hdap.steps`. Only lightweight components run
under kfp.local's SubprocessRunner, so on a cluster they run in the step image named by
HDAP_STEP_IMAGE at compile time (built from images/Dockerfile.cpu, with hdap installed).
"""

import os

STEP_IMAGE = os.environ.get("HDAP_STEP_IMAGE", "hdap-step:0.1.0")
