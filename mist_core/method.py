"""The one interface every method offers (MIST, the baselines, and anything a user adds).

A method is built from its typed config, a DataSpec and a task, and offers:
  train_step(batch) -> {name: float}     one optimisation step (MIST's three lifted stages happen inside)
  predict(images)   -> Prediction        fixed fields with documented shapes (mist_core.types.Prediction)
  default_config(scale), search_space()  presets per scale and the sweeper's search space
  state_dict() / load_state_dict()       networks and optimisers, as plain tensors (weights_only-safe)
The training loop, metrics, sweeps and tables never branch on which method this is.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from mist_core.config import StrictConfig, parse_config
from mist_core.types import Batch, DataSpec, Prediction, Task

__all__ = ["Method", "LogUniform", "Uniform", "IntRange", "Choice", "SearchSpace", "SCALES"]

SCALES = ("smoke", "quick", "paper")


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
    """Base class. Subclasses set `name`, `Config`, `tasks`, and implement the abstract methods."""

    name: ClassVar[str]
    Config: ClassVar[type[StrictConfig]]
    tasks: ClassVar[tuple[Task, ...]] = ("recon", "classify")

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
    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimisation step on `batch` (already on self.device); returns named scalar losses."""

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
            o.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Tensors/numbers beyond modules and optimisers (e.g. a step counter). Must be weights_only-safe."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
