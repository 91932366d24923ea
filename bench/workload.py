"""One method ready to train on one batch, built as mist_core.train.Trainer builds it.

resolve(RunConfig) applies the scale's presets (method config via `Method.make_config(scale, overrides)`, data and
training presets); the data are `n_train = batch size` images of the dataset generated in memory (no cache);
the method gets the DataSpec of that split, `fit_setup` on it, and the batch (B, C, H, W) on its device. Steps go
through mist_core.graphs.StepRunner as the Trainer's do (on CUDA: a captured graph where the method allows it, unless
`graphs=False`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mist_core.data import Splits, load_splits
from mist_core.graphs import StepRunner
from mist_core.method import Method
from mist_core.precision import apply_precision
from mist_core.presets import train_config
from mist_core.registry import get_method, method_names
from mist_core.train import Resolved, RunConfig, resolve
from mist_core.types import Batch

__all__ = ["Workload", "load_case", "build", "make_workload", "method_tasks"]


@dataclass
class Workload:
    method: Method
    batch: Batch          # images (B, C, H, W) on the method's device
    resolved: Resolved
    runner: StepRunner

    @property
    def batch_size(self) -> int:
        return len(self.batch)

    def step(self) -> dict[str, torch.Tensor]:
        return self.runner(self.batch)


def method_tasks(methods: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(method, task) for every named method (default: every registered one) and each task it supports."""
    return [(name, task) for name in (methods or tuple(method_names())) for task in get_method(name).tasks]


def load_case(method: str, task: str, scale: str, device: str = "cpu", dataset: str = "mnist_hard",
              seed: int = 0, method_params: dict | None = None, dataset_params: dict | None = None,
              batch_size: int | None = None) -> tuple[Resolved, Splits]:
    """The resolved run (every preset applied, then the overrides) and its data: n_train = the batch size (the
    scale's unless given), no test split."""
    B = batch_size or train_config(scale).batch_size
    r = resolve(RunConfig(method=method, dataset=dataset, task=task, scale=scale, seed=seed,
                          method_params=method_params or {},
                          dataset_params={**(dataset_params or {}), "n_train": B, "n_test": 0, "seed": seed},
                          train={"device": device, "batch_size": B}))
    return r, load_splits(r.dataset_cfg, use_cache=False)


def build(r: Resolved, splits: Splits, graphs: bool | None = None) -> Workload:
    """The method on its device, after fit_setup, with the whole training split as its batch; steps captured in a
    CUDA graph as train.cuda_graphs says, or as `graphs` says when given."""
    apply_precision(r.train_cfg.precision)      # as the Trainer: full fp32 unless the run asks otherwise
    torch.manual_seed(r.run.seed)
    m = r.method_cls(r.method_cfg, splits.train.spec, r.run.task, r.train_cfg.device)
    m.fit_setup(splits.train.batch(slice(0, min(len(splits.train), 256))).images.to(m.device))
    m.train()
    runner = StepRunner(m, r.train_cfg.cuda_graphs if graphs is None else graphs)
    return Workload(m, splits.train.batch(slice(0, r.train_cfg.batch_size)).to(m.device), r, runner)


def make_workload(method: str, task: str, scale: str, device: str = "cpu", dataset: str = "mnist_hard",
                  seed: int = 0) -> Workload:
    return build(*load_case(method, task, scale, device, dataset, seed))
