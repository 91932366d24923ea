"""Writers for tiny data fixtures in the real on-disk formats: MNIST IDX files and SVHN's digitStruct.mat."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

SVHN_FIELDS = ("label", "left", "top", "width", "height")


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An unsigned-byte IDX file (magic 0x0000080N, N = ndim), gzipped if `gz`."""
    array = np.ascontiguousarray(array, np.uint8)
    raw = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist_dir(directory: Path, n_train: int = 60, n_test: int = 30, gz: bool = False, seed: int = 0) -> Path:
    """The four official MNIST files holding random blob 'digits' of every class."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            y0, x0 = rng.integers(4, 10, 2)
            images[i, y0 : y0 + rng.integers(8, 16), x0 : x0 + rng.integers(4, 14)] = rng.integers(1, 256)
        labels = np.arange(n) % 10
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return directory


def write_digit_struct(path: Path, entries: list[tuple[str, np.ndarray]]) -> Path:
    """digitStruct.mat as MATLAB v7.3 writes it: `digitStruct/name` and `digitStruct/bbox` are (N, 1) object
    references into '#refs#'; a name is a (len, 1) uint16 char array; a one-digit bbox field is a 1x1 double,
    a multi-digit one an (n, 1) array of references to 1x1 doubles. entries: (name, (D, 5) label, left, top,
    width, height) with label 10 for the digit 0."""
    import h5py

    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        group = f.create_group("digitStruct")
        names = group.create_dataset("name", (len(entries), 1), dtype=h5py.ref_dtype)
        bboxes = group.create_dataset("bbox", (len(entries), 1), dtype=h5py.ref_dtype)
        for i, (name, rows) in enumerate(entries):
            chars = refs.create_dataset(f"name{i}", data=np.array([ord(c) for c in name], np.uint16)[:, None])
            names[i, 0] = chars.ref
            box = refs.create_group(f"bbox{i}")
            for j, field in enumerate(SVHN_FIELDS):
                values = np.asarray(rows, np.float64)[:, j]
                if len(values) == 1:
                    box.create_dataset(field, data=values.reshape(1, 1))
                else:
                    scalars = [refs.create_dataset(f"bbox{i}_{field}{k}", data=np.array([[v]])).ref
                               for k, v in enumerate(values)]
                    ds = box.create_dataset(field, (len(values), 1), dtype=h5py.ref_dtype)
                    for k, r in enumerate(scalars):
                        ds[k, 0] = r
            bboxes[i, 0] = box.ref
    return path


def write_svhn_dir(directory: Path, entries: list[tuple[str, tuple[int, int], np.ndarray]], seed: int = 0) -> Path:
    """PNGs (name, (height, width)) with a bright rectangle per box, and their digitStruct.mat."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name, (h, w), rows in entries:
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        for label, left, top, width, height in np.asarray(rows, np.int64):
            img[max(top, 0) : top + height, max(left, 0) : left + width] = (200, 30 + 20 * label % 200, 90)
        Image.fromarray(img).save(directory / name)
    write_digit_struct(directory / "digitStruct.mat", [(name, np.asarray(rows, np.float64)) for name, _, rows in entries])
    return directory


# (name, (H, W) original size, rows of label, left, top, width, height): two-digit images, a one-digit image
# (1x1 value fields), a three-digit image; label 10 = digit 0; one two-digit image has a 20 px-high digit
SVHN_TRAIN = [
    ("1.png", (50, 100), [[1, 10, 5, 15, 35], [10, 30, 6, 16, 34]]),
    ("2.png", (64, 120), [[7, 50, 10, 20, 40]]),
    ("3.png", (40, 90), [[2, 5, 2, 12, 32], [3, 20, 3, 12, 31], [4, 35, 4, 12, 30]]),
    ("4.png", (80, 160), [[5, 40, 10, 25, 60], [6, 70, 12, 25, 58]]),
]
SVHN_TEST = [
    ("1.png", (60, 120), [[8, 10, 10, 20, 40], [9, 40, 12, 20, 38]]),
    ("2.png", (60, 120), [[10, 10, 10, 20, 20], [1, 40, 12, 20, 38]]),
    ("3.png", (45, 45), [[4, 5, 5, 30, 31]]),
]
