"""hdap: compress a DNN for a fleet of identical edge devices that no longer perform alike.

The library holds every stage as a plain function; the Kubeflow components in `components/`
only adapt them. Nothing in this package imports kfp.
"""

__version__ = "0.1.0"
