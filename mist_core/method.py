"""The one interface every method offers (MIST, the baselines, and anything a user adds).

A method is one `Method` subclass in one file: in baselines/ (then one line in mist_core/registry.py's BUILTIN,
whose key must equal the class's `name`), or in the user's own package, named by its import path 'module:Class'
wherever a method name is taken (no edit here). The class sets, checked when it is created (a TypeError that
names the class and the field):
  name     str: the method's name in results and figures; the registry key when registered
  Config   a mist_core.config.StrictConfig subclass: every hyper-parameter, typed, unknown keys refused
  tasks    non-empty tuple of 'recon' / 'classify': the tasks it supports (no default)
and may set:
  learns      bool, default True. False for a method with nothing to learn (a mean image, a fixed clustering):
              the trainer then runs one pass over the training data (or max_steps if fewer), not the whole budget
  cuda_graph  bool, default False. True: on CUDA the trainer captures train_step once in a CUDA graph and replays
              it (mist_core.graphs). Only for a step with no host read, fixed shapes and no Python state that
              changes from step to step (keep such state in device tensors): a graph replays what it captured
  step_draws_noise  bool, default False. True for a train_step that draws random numbers from torch's default
              generator (sampling, random warps): after a failed CUDA graph capture that generator may be left in
              capture mode, so such a step is not run eagerly in the same process (mist_core.graphs.CaptureFailed)
and implements:
  default_config(scale)                  its Config at each scale ('smoke', 'quick', 'paper')
  train_step(batch) -> {name: Tensor}    one optimisation step; each loss a detached 0-d tensor (a Python float is
                                         accepted), read by the trainer only when it logs. The FIRST key is the
                                         primary objective: the loss that must fall over repeated steps on one fixed
                                         batch (a method without parameters: must not rise); the contract tests
                                         check it. No host read inside a learning method's step (`.item()`,
                                         `float(t)`, `bool(t)`, data-dependent shapes): tests/test_host_sync.py
  predict(images, counts) -> Prediction  fixed fields with documented shapes (mist_core.types.Prediction):
                                         `recon` for the recon task, `class_probs` for classify
optionally search_space() (the sweeper's domains), fit_setup(images), extra_state() / load_extra_state().
state_dict() / load_state_dict() carry networks and optimisers as plain tensors (weights_only-safe).
The training loop, metrics, sweeps and tables never branch on which method this is.
tests/test_contract.py runs every registered method, and any `--method module:Class` (or MIST_BENCH_METHODS).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from mist_core.config import StrictConfig, parse_config
from mist_core.optim import load_optimizer_state
from mist_core.types import Batch, DataSpec, Prediction, Task

__all__ = ["Method", "LogUniform", "Uniform", "IntRange", "Choice", "SearchSpace", "SCALES", "TASKS"]

SCALES = ("smoke", "quick", "paper")
TASKS: tuple[Task, ...] = ("recon", "classify")


# --- search-space description, independent of any sweeper -----------------------------------------
@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int  # inclusive


@dataclass(frozen=True)
class Choice:
    values: Sequence[Any]


SearchSpace = dict[str, LogUniform | Uniform | IntRange | Choice]


class Method(abc.ABC):
    """Base class of every method; see the module docstring for the whole contract.

    A concrete subclass sets `name` (str, on the class itself; the registry key when registered), `Config` (a
    StrictConfig subclass) and `tasks` (a non-empty tuple of 'recon' / 'classify'; no default); `Config` and
    `tasks` may come from a parent method (e.g. a variant of MIST); `learns` (bool) defaults to True (False: the
    trainer runs one pass over the training data). A class with abstract methods left is not checked. The first
    loss `train_step` returns is the primary objective (it must fall on a fixed batch).
    """

    name: ClassVar[str]
    Config: ClassVar[type[StrictConfig]]
    tasks: ClassVar[tuple[Task, ...]]
    # False: more steps cannot change the method, so one pass over the training data is its whole budget
    learns: ClassVar[bool] = True
    # True: train_step may be captured in a CUDA graph and replayed (see the module docstring)
    cuda_graph: ClassVar[bool] = False
    # True: train_step draws random numbers (no eager fallback in the process after a failed capture)
    step_draws_noise: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # ABCMeta sets __abstractmethods__ only after this hook: work it out the way it does
        abstract = {n for b in cls.__bases__ for n in getattr(b, "__abstractmethods__", ())}
        abstract |= {n for n, v in vars(cls).items() if getattr(v, "__isabstractmethod__", False)}
        if any(getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in abstract):
            return
        where = f"{cls.__module__}.{cls.__qualname__}"
        problems = []
        name = vars(cls).get("name")
        if name is None:
            problems.append("`name` is missing: set name = '<registry key>' on the class itself")
        elif not (isinstance(name, str) and name):
            problems.append(f"`name` must be a non-empty str, got {name!r}")
        cfg = getattr(cls, "Config", None)
        if cfg is None:
            problems.append("`Config` is missing: set Config = <a mist_core.config.StrictConfig subclass>")
        elif not (isinstance(cfg, type) and issubclass(cfg, StrictConfig)):
            problems.append(f"`Config` must be a mist_core.config.StrictConfig subclass, got {cfg!r}")
        tasks = getattr(cls, "tasks", None)
        if tasks is None:
            problems.append(f"`tasks` is missing (there is no default): set tasks = a non-empty tuple of {TASKS}")
        elif not (isinstance(tasks, tuple) and tasks and all(t in TASKS for t in tasks)
                  and len(set(tasks)) == len(tasks)):
            problems.append(f"`tasks` must be a non-empty tuple of distinct tasks from {TASKS}, got {tasks!r}")
        for flag, meaning in (("learns", "True unless the method has nothing to learn"),
                              ("cuda_graph", "True only for a step a CUDA graph can replay"),
                              ("step_draws_noise", "True for a step that draws random numbers")):
            value = getattr(cls, flag, None)
            if not isinstance(value, bool):
                problems.append(f"`{flag}` must be a bool ({meaning}), got {value!r}")
        if problems:
            raise TypeError(f"method class {where}: " + "; ".join(problems))

    def __init__(self, cfg: StrictConfig | dict, spec: DataSpec, task: Task, device: str | torch.device = "cpu"):
        if task not in self.tasks:
            raise ValueError(f"method {self.name!r} does not support task {task!r} (supports {self.tasks})")
        self.cfg = parse_config(self.Config, cfg, where=f"method.{self.name}")
        self.spec = spec
        self.task = task
        self.device = torch.device(device)

    # --- presets and search space ---------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def default_config(cls, scale: str) -> StrictConfig:
        """The config this method uses at `scale` ('smoke', 'quick', 'paper')."""

    @classmethod
    def search_space(cls) -> SearchSpace:
        """Hyper-parameters the sweeper may tune: config field name -> domain."""
        return {}

    @classmethod
    def make_config(cls, scale: str, overrides: dict | None = None) -> StrictConfig:
        base = cls.default_config(scale).model_dump()
        return parse_config(cls.Config, {**base, **(overrides or {})}, where=f"method.{cls.name}")

    # --- the contract ----------------------------------------------------------------------------
    def fit_setup(self, train_images: Tensor) -> None:
        """Called once before training with a sample of training images (B, C, H, W). Optional."""

    @abc.abstractmethod
    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        """One optimisation step on `batch` (already on self.device); returns named 0-d loss tensors (detached)."""

    @abc.abstractmethod
    def predict(self, images: Tensor, counts: Tensor | None = None) -> Prediction:
        """Predict on images (B, C, H, W); `counts` (B,) is the known instance count where the protocol gives it."""

    # --- state ---------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {k: v for k, v in vars(self).items() if isinstance(v, nn.Module)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def train(self, mode: bool = True) -> "Method":
        for m in self.modules().values():
            m.train(mode)
        return self

    def eval(self) -> "Method":
        return self.train(False)

    def n_parameters(self) -> int:
        return sum(p.numel() for m in self.modules().values() for p in m.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            load_optimizer_state(o, state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Tensors/numbers beyond modules and optimisers (e.g. a step counter). Must be weights_only-safe."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
