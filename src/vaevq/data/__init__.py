"""Data: built-in photo tiles, image folders, deterministic sharded sampling."""

from vaevq.data.datasets import (
    BuiltinPhotos,
    ImageFolderDataset,
    build_datasets,
    build_eval_dataset,
    build_token_dataset,
    image_folder_splits,
    warm_data_caches,
    warm_image_scan,
)
from vaevq.data.sampler import StepBatchSampler

__all__ = ["BuiltinPhotos", "ImageFolderDataset", "StepBatchSampler", "build_datasets",
           "build_eval_dataset", "build_token_dataset", "image_folder_splits",
           "warm_data_caches", "warm_image_scan"]
