"""Datasets for the search and the fine-tune: nothing is downloaded at run time."""

from hdap.data.datasets import DATASETS, DataConfig, Dataset, load_dataset

__all__ = ["DATASETS", "DataConfig", "Dataset", "load_dataset"]
