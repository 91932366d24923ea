"""Procedural Gabor noise (Lagae et al. 2009; paper 5.1, Figure 4) with its ground-truth impulse process.

raw(p) = sum_i w_i g_{t_i}(p - p_i), with g_t(x) = exp(-pi a^2 |x|^2) cos(2 pi F0 <x, (cos th_t, sin th_t)>)
(x right, y down: th = 90 deg is along +y), truncated to the disk where the envelope is >= `truncation`.
Impulses sit on pixel centres: p_i = (px + 0.5, py + 0.5) with integer (px, py) uniform on the canvas, so
each kernel is an exact (k, k) image and raw = the weighted kernels pasted at the impulses. Their number
per image is Poisson(mean_count) conditioned on count_range; weights are uniform in weight_range (> 0);
kernel types t (one per orientation) are uniform. image = raw * norm_scale + norm_shift with shift 0.5 and
scale 0.5 / max|raw| over both splits, so images lie in [0, 1] and zero noise is mid-grey.
Labels are the kernel type (orientation index; 0 with the default single orientation); boxes are the
kernel's (k, k) support square clipped to the canvas.

extras (ground truth, all with a leading N):
  positions (N, L, 2) float64 (x, y) px, weights (N, L) float64, kernel_index (N, L) int64 (-1 padding),
  kernel_params (N, T, 3) float64 (a, F0, theta rad), kernels (N, T, k, k) float32, norm_scale (N,), norm_shift (N,).
"""
from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from mist_core.config import StrictConfig
from mist_core.data.container import MultiInstanceData, Splits
from mist_core.data.errors import DataError

__all__ = ["GaborConfig", "generate_gabor", "gabor_kernels", "render_gabor", "kernel_radius"]


class GaborConfig(StrictConfig):
    n_train: Annotated[int, Field(ge=0, description="training images")] = 10_000
    n_test: Annotated[int, Field(ge=0, description="test images")] = 2_000
    seed: Annotated[int, Field(ge=0, description="the generator's seed (>= 0: numpy refuses a negative seed)")] = 0
    canvas: Annotated[int, Field(ge=1, description="square canvas side, px")] = 80
    a: Annotated[float, Field(gt=0, description="envelope bandwidth, 1/px (support radius ~ 0.98 / a at 5%)")] = 0.1
    f0: Annotated[float, Field(ge=0, description="carrier frequency, cycles/px")] = 0.1
    orientations_deg: Annotated[tuple[float, ...], Field(
        min_length=1, description="kernel orientations, degrees: one kernel type each")] = (45.0,)
    mean_count: Annotated[float, Field(gt=0, description="Poisson mean of impulses per image")] = 9.0
    count_range: tuple[int, int] = Field((1, 18),
                                         description="the Poisson count is conditioned on this (min, max) range")
    weight_range: tuple[float, float] = Field((0.5, 1.0), description="impulse weights drawn uniformly from (min, max)")
    truncation: Annotated[float, Field(
        gt=0, lt=1, description="a kernel's support ends where its envelope falls below this fraction")] = 0.05

    @model_validator(mode="after")
    def _ranges(self) -> "GaborConfig":
        lo, hi = self.count_range
        if lo < 0 or lo > hi or hi < 1:
            raise ValueError(f"count_range {self.count_range} must satisfy 0 <= min <= max, max >= 1")
        if not 0 < self.weight_range[0] <= self.weight_range[1]:
            raise ValueError(f"weight_range {self.weight_range} must satisfy 0 < min <= max")
        if poisson_pmf(np.arange(lo, hi + 1), self.mean_count).sum() <= 1e-12:
            raise ValueError(f"count_range {self.count_range} has no mass under Poisson(mean_count={self.mean_count})")
        return self


def poisson_pmf(k: np.ndarray, mean: float) -> np.ndarray:
    """P(X = k) for X ~ Poisson(mean)."""
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    return np.exp(k * math.log(mean) - mean - lgamma(k + 1.0))


def kernel_radius(a: float, truncation: float) -> float:
    """Radius (px) where the envelope exp(-pi a^2 r^2) falls to `truncation`."""
    return math.sqrt(-math.log(truncation) / math.pi) / a


def gabor_kernels(params: np.ndarray, truncation: float) -> np.ndarray:
    """Kernel images (T, k, k) float64 for params (T, 3) = (a, F0, theta), centred on the middle pixel."""
    a = params[:, 0]
    h = int(math.floor(max(kernel_radius(float(x), truncation) for x in a)))
    off = np.arange(-h, h + 1, dtype=np.float64)
    dy, dx = off[:, None], off[None, :]  # (k, 1), (1, k)
    r2 = dx * dx + dy * dy  # (k, k)
    a2 = (a * a)[:, None, None]  # (T, 1, 1)
    along = dx * np.cos(params[:, 2])[:, None, None] + dy * np.sin(params[:, 2])[:, None, None]  # (T, k, k)
    g = np.exp(-np.pi * a2 * r2) * np.cos(2 * np.pi * params[:, 1, None, None] * along)
    return np.where(np.exp(-np.pi * a2 * r2) >= truncation, g, 0.0)


def render_gabor(pixels: np.ndarray, weights: np.ndarray, kinds: np.ndarray, kernels: np.ndarray,
                 canvas: int, chunk: int = 512) -> np.ndarray:
    """raw (N, H, W) float32: kernels (T, k, k)[kinds (N, L)] * weights (N, L) pasted at pixels (N, L, 2) (x, y).

    Sums in float64 (per chunk of images), returns float32.
    """
    N, L = weights.shape
    k = kernels.shape[-1]
    h = k // 2
    P = canvas + 2 * h
    offs = (np.arange(k)[:, None] * P + np.arange(k)[None, :]).ravel()  # (k*k,)
    flat_kernels = kernels.reshape(len(kernels), k * k)
    raw = np.empty((N, canvas, canvas), np.float32)
    for s in range(0, N, chunk):
        n = min(chunk, N - s)
        buf = np.zeros((n, P, P))
        flat = buf.reshape(-1)
        for slot in range(L):  # within a slot each image has at most one impulse: no index repeats
            i = np.flatnonzero(kinds[s : s + n, slot] >= 0)
            px, py = pixels[s + i, slot, 0], pixels[s + i, slot, 1]
            lin = (i * P * P + py * P + px)[:, None] + offs  # (m, k*k)
            flat[lin] += weights[s + i, slot, None] * flat_kernels[kinds[s + i, slot]]
        raw[s : s + n] = buf[:, h : h + canvas, h : h + canvas]
    return raw


def _sample(cfg: GaborConfig, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lo, hi = cfg.count_range
    support = np.arange(lo, hi + 1)
    pmf = poisson_pmf(support, cfg.mean_count)
    counts = rng.choice(support, size=n, p=pmf / pmf.sum())  # (n,)
    L = hi
    live = np.arange(L)[None, :] < counts[:, None]  # (n, L)
    pixels = np.where(live[..., None], rng.integers(0, cfg.canvas, size=(n, L, 2)), 0)  # (n, L, 2) (x, y)
    weights = np.where(live, rng.uniform(*cfg.weight_range, size=(n, L)), 0.0)
    kinds = np.where(live, rng.integers(0, len(cfg.orientations_deg), size=(n, L)), -1)
    return {"pixels": pixels, "weights": weights, "kinds": kinds, "counts": counts}


def _split(cfg: GaborConfig, s: dict[str, np.ndarray], raw: np.ndarray, params: np.ndarray,
           kernels: np.ndarray, scale: float) -> MultiInstanceData:
    n, W = len(raw), cfg.canvas
    h = kernels.shape[-1] // 2
    live = s["kinds"] >= 0  # (n, L)
    px, py = s["pixels"][..., 0], s["pixels"][..., 1]
    boxes = np.stack([px - h, py - h, px + h + 1, py + h + 1], -1).clip(0, W)  # (n, L, 4)
    extras = {
        "positions": np.where(live[..., None], s["pixels"] + 0.5, 0.0),
        "weights": s["weights"],
        "kernel_index": s["kinds"].astype(np.int64),
        "kernel_params": np.broadcast_to(params, (n, *params.shape)).copy(),
        "kernels": np.broadcast_to(kernels.astype(np.float32), (n, *kernels.shape)).copy(),
        "norm_scale": np.full(n, scale),
        "norm_shift": np.full(n, 0.5),
    }
    images = raw[:, None]  # (n, 1, H, W), raw scaled in place
    images *= np.float32(scale)
    images += np.float32(0.5)
    np.clip(images, 0.0, 1.0, out=images)  # float32 rounding only
    return MultiInstanceData(images, np.where(live[..., None], boxes, 0).astype(np.float32),
                             s["kinds"].astype(np.int64), s["counts"].astype(np.int64), extras)


def generate_gabor(cfg: GaborConfig) -> Splits:
    T = len(cfg.orientations_deg)
    params = np.stack([np.full(T, cfg.a), np.full(T, cfg.f0), np.deg2rad(cfg.orientations_deg)], 1)  # (T, 3)
    kernels = gabor_kernels(params, cfg.truncation)  # (T, k, k)
    if kernels.shape[-1] > 4 * cfg.canvas:
        raise DataError(f"a={cfg.a}: the kernel support ({kernels.shape[-1]} px) dwarfs canvas={cfg.canvas}")
    samples = [_sample(cfg, n, np.random.default_rng([cfg.seed, i])) for i, n in enumerate((cfg.n_train, cfg.n_test))]
    raws = [render_gabor(s["pixels"], s["weights"], s["kinds"], kernels, cfg.canvas) for s in samples]
    peak = max((max(float(r.max()), -float(r.min())) for r in raws if r.size), default=0.0)
    scale = 0.5 / peak if peak > 0 else 1.0
    train, test = (_split(cfg, s, r, params, kernels, scale) for s, r in zip(samples, raws))
    return Splits(train, test)
