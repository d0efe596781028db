"""Datasets for the search and the fine-tune: nothing is downloaded at run time."""

from hdap.data.datasets import DataConfig, Dataset, load_dataset, recipe_config

__all__ = ["DataConfig", "Dataset", "load_dataset", "recipe_config"]
