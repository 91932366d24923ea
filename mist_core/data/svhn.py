"""SVHN in its real uncropped format (paper 5.2, Table 4): a folder of PNGs plus digitStruct.mat.

digitStruct.mat is MATLAB v7.3 (HDF5): `digitStruct/name` and `digitStruct/bbox` hold object references,
one per image; a name is a uint16 character array; a bbox group has `label`, `left`, `top`, `width`,
`height`, each either the value(s) themselves (a 1x1 dataset for a one-digit image) or an Nx1 array of
references to 1x1 scalars. Label 10 means digit 0.
Kept: images with exactly `n_digits` digits, resized to height x width (60 x 240) as uint8 RGB, boxes
rescaled and clipped to the image. At test time, images having a digit box shorter than
`test_min_box_height` px in the ORIGINAL image are dropped (paper: "we exclude images with small bounding
boxes (< 30 pixels in height)"), the whole image, as the paper says, not just the digit.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import Field

from mist_core.config import StrictConfig
from mist_core.data.container import MultiInstanceData, Splits
from mist_core.data.errors import DataError

if TYPE_CHECKING:
    import h5py

__all__ = ["SvhnConfig", "read_digit_struct", "check_svhn", "load_svhn_split", "generate_svhn", "svhn_fingerprint"]

FIELDS = ("label", "left", "top", "width", "height")


class SvhnConfig(StrictConfig):
    train_dir: str = Field(description="a folder of PNGs with its digitStruct.mat (SVHN's train.tar.gz, unpacked)")
    test_dir: str = Field(description="the same for the test split (SVHN's test.tar.gz, unpacked)")
    n_train: Annotated[int, Field(ge=0,
                                  description="at most this many training images (a seeded random subset)")] = 1_000_000
    n_test: Annotated[int, Field(ge=0,
                                 description="at most this many test images (a seeded random subset)")] = 1_000_000
    seed: Annotated[int, Field(ge=0, description="seed of the subsets (>= 0: numpy refuses a negative seed)")] = 0
    height: Annotated[int, Field(ge=1, description="images are resized to this height, px")] = 60
    width: Annotated[int, Field(ge=1, description="images are resized to this width, px")] = 240
    n_digits: Annotated[int, Field(ge=1, description="only images with this many digits are kept")] = 2
    test_min_box_height: Annotated[float, Field(ge=0)] | None = Field(
        30.0, description="test images with a digit box under this height (px, original) are dropped; None: keep all")


def _values(f: "h5py.File", ds: "h5py.Dataset") -> np.ndarray:
    """A bbox field's values: the numbers themselves, or numbers behind references."""
    import h5py

    data = ds[()]
    if h5py.check_dtype(ref=ds.dtype) is not None:
        return np.array([float(np.asarray(f[r][()]).ravel()[0]) for r in data.ravel()])
    return np.asarray(data, np.float64).ravel()


def _entry(f: "h5py.File", path: Path, name_ref, box_ref, n_digits: int | None) -> tuple[str, np.ndarray] | None:
    """One image's (name, (D, 5) rows), label 10 -> 0, checked; None when it has other than `n_digits` digits."""
    group = f[box_ref]
    if n_digits is not None and group["label"].size != n_digits:
        return None
    name = "".join(map(chr, np.asarray(f[name_ref][()]).ravel()))
    cols = [_values(f, group[k]) for k in FIELDS]
    if len({len(c) for c in cols}) != 1:
        raise DataError(f"{path}: bbox fields of {name} differ in length")
    rows = np.stack(cols, 1)  # (D, 5)
    if not np.isfinite(rows).all():
        raise DataError(f"{path}: {name}: a bbox value is not a finite number")
    labels = rows[:, 0]
    if ((labels < 1) | (labels > 10) | (labels != np.round(labels))).any():
        raise DataError(f"{path}: {name}: label {labels.tolist()} outside 1..10 (SVHN writes the digit 0 as 10)")
    if (rows[:, 3:] < 0).any():
        raise DataError(f"{path}: {name}: a box of negative width or height {rows[:, 3:].tolist()}")
    rows[:, 0] = np.where(labels == 10, 0, labels)
    return name, rows


def _entries(path: Path, n_digits: int | None, sample: bool) -> list[tuple[str, np.ndarray]]:
    import h5py

    if not path.is_file():
        raise DataError(f"{path}: missing (SVHN needs digitStruct.mat beside its PNGs)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a MATLAB v7.3 (HDF5) file or corrupt ({e})") from None
    with f:
        try:
            names, bboxes = f["digitStruct/name"], f["digitStruct/bbox"]
            if names.size != bboxes.size:
                raise DataError(f"{path}: {names.size} names but {bboxes.size} bbox entries")
            if names.size == 0:
                raise DataError(f"{path}: no images listed")
            pairs = list(zip(names[()].ravel(), bboxes[()].ravel()))
            if sample:
                pairs = [pairs[0], pairs[-1]]
            found = (_entry(f, path, n, b, n_digits) for n, b in pairs)
            return [e for e in found if e is not None]
        except DataError:
            raise
        except (KeyError, ValueError, TypeError, OSError, IndexError) as e:
            raise DataError(f"{path}: not a valid SVHN digitStruct ({type(e).__name__}: {e})") from None


def read_digit_struct(path: str | Path, n_digits: int | None = None) -> list[tuple[str, np.ndarray]]:
    """[(file name, (D, 5) float64 rows of label, left, top, width, height)] in file order; label 10 -> 0.

    With `n_digits`, only images with exactly that many digits (the others' boxes are not read). DataError naming
    the file (and the image) when it is missing, not HDF5, not digitStruct's layout, or holds a label outside 1..10,
    a non-finite value or a negative box size.
    """
    return _entries(Path(path), n_digits, sample=False)


def check_svhn(cfg: SvhnConfig) -> None:
    """What can be checked in seconds before a run: both folders, their digitStruct.mat's layout, its first and last
    entries and their PNGs. (Reading every entry is the run's first step; a bad one fails it with the same line.)"""
    for field, directory in (("train_dir", Path(cfg.train_dir)), ("test_dir", Path(cfg.test_dir))):
        if not directory.is_dir():
            raise DataError(f"svhn.{field}: {directory} is not a directory")
        for name, _ in _entries(directory / "digitStruct.mat", None, sample=True):
            if not (directory / name).is_file():
                raise DataError(f"{directory / 'digitStruct.mat'}: lists {name}, which is not in {directory}")


def _read_png(path: Path, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            size = rgb.size  # (W, H)
            small = rgb.resize((width, height), Image.BILINEAR)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    return np.asarray(small, np.uint8).transpose(2, 0, 1), (size[1], size[0])  # (3, H, W), (H0, W0)


def load_svhn_split(directory: str | Path, cfg: SvhnConfig, limit: int, rng: np.random.Generator,
                    min_box_height: float | None) -> MultiInstanceData:
    """The images of one split with exactly cfg.n_digits digits (at most `limit`, a seeded random subset)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: SVHN directory missing")
    entries = read_digit_struct(directory / "digitStruct.mat", cfg.n_digits)
    if min_box_height is not None:
        entries = [(n, r) for n, r in entries if (r[:, 4] >= min_box_height).all()]
    if len(entries) > limit:
        entries = [entries[i] for i in np.sort(rng.choice(len(entries), limit, replace=False))]
    N, D, H, W = len(entries), cfg.n_digits, cfg.height, cfg.width
    images = np.zeros((N, 3, H, W), np.uint8)
    boxes = np.zeros((N, D, 4), np.float32)
    labels = np.zeros((N, D), np.int64)
    orig = np.zeros((N, D, 4), np.float32)
    sizes = np.zeros((N, 2), np.int64)
    for i, (name, rows) in enumerate(entries):
        images[i], (h0, w0) = _read_png(directory / name, H, W)
        x0, y0 = rows[:, 1], rows[:, 2]
        orig[i] = np.stack([x0, y0, x0 + rows[:, 3], y0 + rows[:, 4]], 1)  # (D, 4) original px
        boxes[i] = (orig[i] * np.array([W / w0, H / h0, W / w0, H / h0])).clip(0, [W, H, W, H])
        labels[i], sizes[i] = rows[:, 0], (h0, w0)
    return MultiInstanceData(images, boxes, labels, np.full(N, D, np.int64),
                             {"orig_boxes": orig, "orig_size": sizes})


def generate_svhn(cfg: SvhnConfig) -> Splits:
    rng_train, rng_test = np.random.default_rng([cfg.seed, 0]), np.random.default_rng([cfg.seed, 1])
    return Splits(load_svhn_split(cfg.train_dir, cfg, cfg.n_train, rng_train, None),
                  load_svhn_split(cfg.test_dir, cfg, cfg.n_test, rng_test, cfg.test_min_box_height))


def svhn_fingerprint(cfg: SvhnConfig) -> str:
    """A hash of both digitStruct.mat files and the PNG listings (names and sizes), not the pixels."""
    h = hashlib.sha256()
    for field, directory in (("train_dir", Path(cfg.train_dir)), ("test_dir", Path(cfg.test_dir))):
        if not directory.is_dir():
            raise DataError(f"svhn.{field}: {directory} is not a directory")
        mat = directory / "digitStruct.mat"
        if not mat.is_file():
            raise DataError(f"{mat}: missing (SVHN needs digitStruct.mat beside its PNGs)")
        h.update(mat.read_bytes())
        for png in sorted(directory.glob("*.png")):
            h.update(f"{png.name}:{png.stat().st_size}".encode())
    return h.hexdigest()
