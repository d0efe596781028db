from components.cluster.component import cluster

__all__ = ["cluster"]
