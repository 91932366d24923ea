"""Scale presets shared by every method: data sizes and the training budget.

smoke  seconds; for tests and for checking that a config runs at all.
quick  minutes on 2 CPU cores; small networks that still learn something real (a real bottleneck).
paper  the paper's sizes; meant for GPUs (about 2-3 images/s on 2 CPU cores).
Each method's own network sizes per scale live in its file (`Method.default_config(scale)`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from mist_core.config import StrictConfig

Scale = Literal["smoke", "quick", "paper"]


class TrainConfig(StrictConfig):
    batch_size: int = Field(32, ge=1)
    max_steps: int = Field(1000, ge=1)            # the budget: this many training steps
    max_seconds: float | None = Field(None, gt=0)  # a safety cap on training seconds (evaluation not counted);
                                                   # a run it stops short of max_steps reports stopped_by_seconds=1
    eval_every: int = Field(200, ge=1)             # steps between interim evaluations (and reports to a sweeper)
    eval_images: int = Field(256, ge=1)            # test images used by interim evaluations
    final_eval_images: int | None = Field(None, ge=1)  # test images of the final evaluation (None = all)
    threads: int | None = Field(None, ge=1)        # torch intra-op threads (None = all usable cores)
    device: str = "cpu"
    lr_decay: Literal["none", "cosine"] = "none"   # every optimiser's lr follows this over max_steps
    lr_final: float = Field(0.05, ge=0, le=1)      # cosine: the lr at max_steps, as a fraction of the initial lr


TRAIN_PRESETS: dict[str, dict] = {
    "smoke": dict(batch_size=8, max_steps=6, eval_every=3, eval_images=16),
    "quick": dict(batch_size=32, max_steps=1000, eval_every=100, eval_images=256, final_eval_images=1000,
                  lr_decay="cosine"),
    # paper: the authors' schedule, 10 epochs of 20,000 images at batch 32
    "paper": dict(batch_size=32, max_steps=6250, eval_every=625, eval_images=1000),
}

DATA_PRESETS: dict[str, dict] = {
    "smoke": dict(n_train=64, n_test=32),
    "quick": dict(n_train=6000, n_test=1000),
    "paper": dict(n_train=20000, n_test=2000),
}


def train_config(scale: str, overrides: dict | None = None) -> TrainConfig:
    from mist_core.config import parse_config

    if scale not in TRAIN_PRESETS:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(TRAIN_PRESETS)}")
    return parse_config(TrainConfig, {**TRAIN_PRESETS[scale], **(overrides or {})}, where="train")
