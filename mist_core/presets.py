"""Scale presets shared by every method: data sizes, the training budget, and the networks methods share.

smoke  seconds; for tests and for checking that a config runs at all.
quick  minutes on 2 CPU cores; small networks that still learn something real (a real bottleneck).
paper  the paper's sizes; meant for GPUs (about 2-3 images/s on 2 CPU cores).
MIST's networks per scale are here (`network_preset`), since baselines reuse them; each method's own sizes per
scale live in its file (`Method.default_config(scale)`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from mist_core.config import StrictConfig

Scale = Literal["smoke", "quick", "paper"]


class TrainConfig(StrictConfig):
    batch_size: int = Field(32, ge=1, description="images per training step")
    max_steps: int = Field(1000, ge=1, description="the budget: this many training steps")
    max_seconds: float | None = Field(None, gt=0, description="a safety cap on training seconds (evaluation not "
                                      "counted); a run it stops short of max_steps reports stopped_by_seconds=1")
    eval_every: int = Field(200, ge=1, description="steps between interim evaluations (and reports to a sweeper)")
    eval_images: int = Field(256, ge=1, description="test images used by interim evaluations")
    final_eval_images: int | None = Field(None, ge=1, description="test images of the final evaluation (None: all)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: OMP_NUM_THREADS, else "
                                "torch's default, capped at the usable cores)")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N")
    cuda_graphs: bool = Field(True, description="on CUDA, capture the step in a CUDA graph where the method allows")
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="mist_core.precision: fp32 (full), tf32 (TF32 matmuls/convolutions) or bf16 (autocast)")
    lr_decay: Literal["none", "cosine"] = Field("none", description="every optimiser's lr follows this over max_steps")
    lr_final: float = Field(0.05, ge=0, le=1,
                            description="cosine: the lr at max_steps, as a fraction of the initial lr")


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


class TaskNetPreset(StrictConfig):
    """T_tau (mist_core.task.TaskHead) and its Adam step."""
    patch_res: int
    task_width: int
    task_levels: int
    task_blocks: int
    lr_task: float


class HeatmapPreset(StrictConfig):
    """H_eta (mist_core.heatmap.HeatmapNet) at the patch scales `sizes` (pixels), E_K's NMS window, its Adam step."""
    sizes: tuple[float, ...]
    heat_width: int
    heat_blocks: int
    nms_window: int
    lr_heat: float


class LiftingPreset(StrictConfig):
    """MIST's own: the keypoint (x) step and the blur of G's target."""
    kp_lr: float
    kp_steps: int
    kp_max_move: float
    heat_sigma: float


class NetworkPreset(StrictConfig):
    """One scale's networks: those baselines share with MIST (task, heatmap), then MIST's own steps (mist)."""
    task: TaskNetPreset
    heatmap: HeatmapPreset
    mist: LiftingPreset


NETWORK_PRESETS: dict[str, NetworkPreset] = {
    "smoke": NetworkPreset(
        task=TaskNetPreset(patch_res=8, task_width=4, task_levels=3, task_blocks=1, lr_task=1e-3),
        heatmap=HeatmapPreset(sizes=(20.0,), heat_width=4, heat_blocks=1, nms_window=5, lr_heat=1e-3),
        mist=LiftingPreset(kp_lr=1e4, kp_steps=2, kp_max_move=2.0, heat_sigma=0.0)),
    # quick, MIST's detection on 9-digit MNIST hard at 1,000 steps (docs/reproduction.md, "The oracle ladder"): one 20 px
    # scale (two, 16 and 24: 0.25 against 0.40 at step 500); 6 heatmap blocks, NMS 9 (receptive field 29 px; heatmap
    # on the true centres 0.93, 4 blocks and NMS 5: 0.84; MIST 0.778 against 0.705); G blurred by 1 px (0.705 against
    # 0.588 with appendix B's spike); 4 keypoint steps of <= 4 px at lr 1e5 (digit-to-keypoint 8.2 -> 6.0 px over 150
    # steps, 7.7 -> 7.3 with 2 steps of 3 px at 1e4)
    "quick": NetworkPreset(
        task=TaskNetPreset(patch_res=16, task_width=8, task_levels=4, task_blocks=1, lr_task=1e-3),
        heatmap=HeatmapPreset(sizes=(20.0,), heat_width=8, heat_blocks=6, nms_window=9, lr_heat=1e-3),
        mist=LiftingPreset(kp_lr=1e5, kp_steps=4, kp_max_move=4.0, heat_sigma=1.0)),
    "paper": NetworkPreset(
        task=TaskNetPreset(patch_res=32, task_width=16, task_levels=5, task_blocks=3, lr_task=1e-4),
        heatmap=HeatmapPreset(sizes=(16.0, 20.0, 24.0, 28.0), heat_width=32, heat_blocks=4, nms_window=5,
                              lr_heat=1e-4),
        mist=LiftingPreset(kp_lr=1e4, kp_steps=2, kp_max_move=2.0, heat_sigma=0.0)),
}


def network_preset(scale: str) -> NetworkPreset:
    if scale not in NETWORK_PRESETS:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(NETWORK_PRESETS)}")
    return NETWORK_PRESETS[scale]
