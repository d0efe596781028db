"""Datasets for the search and the fine-tune: nothing is downloaded at run time."""

from hdap.data.datasets import DataConfig, Dataset, load_dataset

__all__ = ["DataConfig", "Dataset", "load_dataset"]
