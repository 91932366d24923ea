"""Adam over one flat buffer: the optimiser every built-in method uses.

torch.optim.Adam reads each parameter's step counter to the host on the CPU (`.item()` inside its fused and
for-loop kernels; only CUDA has a `capturable` path without reads), and issues its work per parameter: on a quick
MIST step that was 78 host reads and ~2,100 of the step's 6,800 aten ops. Here a method's parameters are views into
one flat tensor and their gradients views into another (`Tensor.set_`: the parameters keep their identity, shape
and memory format; autograd accumulates into the views in place), so a step is a dozen whole-buffer ops whatever
the number of parameters, with the step counter and the bias corrections as device tensors: no host read on any
device, and a step a CUDA graph can capture. On CUDA the learning rate is a 0-d device tensor that `set_lrs` fills
in place, so a captured step reads the schedule's value.

The update is torch.optim.Adam's (Kingma & Ba; no weight decay, no amsgrad) to float rounding, with one difference:
a parameter whose gradient a step did not touch has gradient 0 rather than None, so its moments still decay (every
built-in method's step reaches all of its parameters). `zero_grad` zeroes the flat gradient; assigning `p.grad`
yourself (or None) breaks the link to the flat buffer, which `step` detects.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

__all__ = ["FlatAdam", "adam", "get_lrs", "set_lrs", "load_optimizer_state", "ALIGN"]

# Every parameter's offset in the flat buffers is a multiple of this many elements (256 bytes in fp32): cuDNN and
# cuBLASLt pick kernels by pointer alignment, and packed back to back most conv weights would start on 8-byte
# boundaries (slower kernels, or none found). The padding costs at most ALIGN - 1 elements per parameter.
ALIGN = 64


class FlatAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Tensor], lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        if len(self.param_groups) != 1:
            raise ValueError("FlatAdam takes one group of parameters")
        ps: list[Tensor] = self.param_groups[0]["params"]
        devices, dtypes = {p.device for p in ps}, {p.dtype for p in ps}
        if len(devices) != 1 or len(dtypes) != 1:
            raise ValueError(f"FlatAdam needs every parameter on one device and dtype, got {devices} and {dtypes}")
        dev, dt = devices.pop(), dtypes.pop()
        sizes = [p.numel() for p in ps]
        offsets, n = [], 0
        for size in sizes:           # each parameter starts on an ALIGN-element boundary; the gaps stay 0 forever
            offsets.append(n)
            n += -(-size // ALIGN) * ALIGN
        self.offsets, self.sizes = offsets, sizes
        self.flat = torch.zeros(n, device=dev, dtype=dt)                          # (N,) every parameter
        self.flat_grad = torch.zeros(n, device=dev, dtype=dt)                     # (N,) every gradient
        self.exp_avg = torch.zeros(n, device=dev, dtype=dt)                       # (N,) first moment
        self.exp_avg_sq = torch.zeros(n, device=dev, dtype=dt)                    # (N,) second moment
        self.steps = torch.zeros((), device=dev, dtype=torch.float32)             # optimiser steps taken
        self._grads: list[Tensor] = []
        with torch.no_grad():
            for p, off in zip(ps, offsets):
                # a view with the parameter's own strides (channels-last convolutions stay channels-last)
                self.flat.as_strided(p.shape, p.stride(), off).copy_(p)
                p.set_(self.flat.untyped_storage(), off, p.shape, p.stride())
                p.grad = self.flat_grad.as_strided(p.shape, p.stride(), off)
                self._grads.append(p.grad)

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - the views must stay: zeroed, never None
        self.flat_grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        if closure is not None:
            raise ValueError("FlatAdam.step takes no closure")
        g = self.param_groups[0]
        broken = [i for i, (p, v) in enumerate(zip(g["params"], self._grads)) if p.grad is not v]
        if broken:
            raise RuntimeError(f"FlatAdam: the gradients of parameters {broken} were replaced (set to None or "
                               f"assigned): they must stay views of the flat gradient; use zero_grad()")
        (b1, b2), lr, eps = g["betas"], g["lr"], g["eps"]
        grad = self.flat_grad
        self.steps.add_(1)
        self.exp_avg.lerp_(grad, 1 - b1)                                          # m = b1 m + (1 - b1) g
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)               # v = b2 v + (1 - b2) g^2
        step_size = lr / (1 - b1 ** self.steps)                                   # 0-d: lr / bias correction 1
        root_bc2 = (1 - b2 ** self.steps).sqrt()                                  # 0-d: sqrt(bias correction 2)
        denom = (self.exp_avg_sq.sqrt() / root_bc2).add_(eps)                     # (N,)
        self.flat.sub_(step_size * self.exp_avg / denom)
        return None

    # --- checkpoints: the flat buffers; torch.optim.Adam's per-parameter state is read too --------------------------
    def state_dict(self) -> dict[str, Any]:
        g = self.param_groups[0]
        return {"flat_adam": {"steps": self.steps.clone(), "exp_avg": self.exp_avg.clone(),
                              "exp_avg_sq": self.exp_avg_sq.clone()},
                "param_groups": [{"lr": g["lr"], "betas": g["betas"], "eps": g["eps"]}]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        g, saved = self.param_groups[0], state["param_groups"][0]
        g["betas"], g["eps"] = tuple(saved["betas"]), saved["eps"]
        g["lr"] = _same_kind(g["lr"], saved["lr"])
        with torch.no_grad():
            if "flat_adam" in state:
                s = state["flat_adam"]
                self.steps.copy_(s["steps"])
                for mine, theirs in ((self.exp_avg, s["exp_avg"]), (self.exp_avg_sq, s["exp_avg_sq"])):
                    if theirs.shape == mine.shape:
                        mine.copy_(theirs)
                    elif theirs.numel() == sum(self.sizes):      # written packed, before the offsets were aligned
                        for off, packed, size in zip(self.offsets, _packed_offsets(self.sizes), self.sizes):
                            mine[off:off + size].copy_(theirs[packed:packed + size])
                    else:
                        raise ValueError(f"optimiser state of {theirs.numel()} numbers for {mine.numel()} here")
                return
            # torch.optim.Adam's: state per parameter index
            per = state["state"]
            for i, p in enumerate(g["params"]):
                if i not in per:
                    continue
                off = p.storage_offset() - self.flat.storage_offset()
                for name, buf in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                    buf.as_strided(p.shape, p.stride(), off).copy_(per[i][name])
                self.steps.fill_(float(per[i]["step"]))


def _packed_offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _same_kind(current: float | Tensor, value: float | Tensor) -> float | Tensor:
    """`value` as a float, or written into `current` when that is a tensor (a captured step reads its memory)."""
    if isinstance(current, Tensor):
        current.fill_(float(value))
        return current
    return float(value)


def adam(params: Iterable[Tensor], lr: float, device: str | torch.device) -> FlatAdam:
    """FlatAdam; on CUDA with its learning rate a 0-d device tensor (a CUDA graph reads the current value)."""
    device = torch.device(device)
    return FlatAdam(params, lr=torch.tensor(float(lr), device=device) if device.type == "cuda" else float(lr))


def get_lrs(opt: torch.optim.Optimizer) -> list[float]:
    """Each param group's learning rate as a Python float (a host read where it is a device tensor: setup only)."""
    return [float(g["lr"]) for g in opt.param_groups]


def set_lrs(opt: torch.optim.Optimizer, lrs: Iterable[float]) -> None:
    """Set each group's learning rate; a tensor learning rate is filled in place (a captured step reads it)."""
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = _same_kind(g["lr"], lr)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """opt.load_state_dict(state), each group's learning rate kept of the kind (and tensor) it had: a checkpoint
    written on another device gives a float where a tensor is wanted, or the reverse."""
    before = [g["lr"] for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, old in zip(opt.param_groups, before):
        g["lr"] = _same_kind(old, g["lr"])
