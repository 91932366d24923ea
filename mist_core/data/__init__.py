"""The data layer: multi-instance datasets by name, generated deterministically and cached.

    from mist_core.data import DATASETS, dataset_config, load_splits, DataError
    cfg = dataset_config("mnist_hard", {"n_train": 1000, "n_test": 200, "seed": 0})
    splits = load_splits(cfg)  # Splits(train, test) of MultiInstanceData

Previews: mist_core.data.preview.write_preview (imports matplotlib, so not imported here).
"""
from mist_core.data.container import MultiInstanceData, Splits
from mist_core.data.errors import DataError
from mist_core.data.registry import DATASETS, check_source, dataset_config, dataset_name, load_splits

__all__ = ["DATASETS", "dataset_config", "dataset_name", "load_splits", "check_source", "DataError",
           "MultiInstanceData", "Splits"]
