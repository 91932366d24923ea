"""The precision a run computes in: one stated policy, a field of the training config (train.precision), applied
when the run starts and recorded in its parameters (MLflow, the results' params_json, the report).

  fp32  full float32 everywhere: no TF32 in matrix products or convolutions, no autocast (the default, until a
        device has measured the others against it: MIST's keypoint step multiplies gradients by kp_lr 1e4-1e5 and
        its accept compares two losses, so rounding can change which steps are taken)
  tf32  float32 storage, TF32 tensor-core products and convolutions on CUDA (cuDNN's own default)
  bf16  as tf32, and each training step under bfloat16 autocast (evaluation stays fp32)
On the CPU TF32 does not exist: fp32 and tf32 compute the same.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

__all__ = ["Precision", "PRECISIONS", "apply_precision", "step_autocast", "precision_state"]

Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")


def apply_precision(precision: Precision) -> None:
    """Set torch's process-wide TF32 switches for `precision` (at the start of a run, before any step)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def step_autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step runs in: bfloat16 autocast for bf16 (no weight cache: a CUDA graph may capture
    the step), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def precision_state() -> dict[str, object]:
    """What torch is set to now (for a benchmark's JSON)."""
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
