"""MNIST composites: determinism, tight boxes, counts, layouts, and impossible requests."""
from __future__ import annotations

import numpy as np
import pytest

from mist_core.config import ConfigError
from mist_core.data import DataError, dataset_config, load_splits
from mist_core.data.container import MultiInstanceData
from mist_core.data.digits import prepared_digits
from mist_core.data.mnist_multi import compose

MNIST = ["mnist_easy", "mnist_hard", "mnist_hard_k9", "mnist_hard_k6_9", "mnist_hard_k3_9", "mnist_uneven"]


def _make(name: str, **over) -> tuple:
    cfg = dataset_config(name, {"n_train": 12, "n_test": 8, **over})
    return cfg, load_splits(cfg, use_cache=False)


def _ink_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("name", MNIST)
def test_same_seed_same_bytes_other_seed_differs(name):
    _, a = _make(name, seed=3)
    _, b = _make(name, seed=3)
    _, c = _make(name, seed=4)
    for split in ("train", "test"):
        for k, v in getattr(a, split).arrays().items():
            assert v.tobytes() == getattr(b, split).arrays()[k].tobytes(), (split, k)
    assert not np.array_equal(a.train.images, c.train.images)


@pytest.mark.parametrize("name", MNIST)
def test_counts_labels_and_padding(name):
    cfg, s = _make(name)
    lo, hi = getattr(cfg, "count_range", (9, 9))
    for d in (s.train, s.test):
        assert d.images.dtype == np.uint8 and d.images.shape[1:] == (1, 80, 80)
        assert ((d.counts >= lo) & (d.counts <= hi)).all()
        live = np.arange(d.labels.shape[1])[None, :] < d.counts[:, None]
        assert ((d.labels >= 0) & (d.labels <= 9))[live].all() and (d.labels[~live] == -1).all()
        assert (d.boxes[~live] == 0).all()
        b = d.boxes[live]
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 80).all() and (b[:, 2:] > b[:, :2]).all()


@pytest.mark.parametrize("name", MNIST)
def test_ink_lies_in_boxes_and_touches_every_edge(name):
    _, s = _make(name)
    for d in (s.train, s.test):
        for img, boxes, k in zip(d.images[:, 0], d.boxes.astype(int), d.counts):
            covered = np.zeros_like(img, bool)
            for x0, y0, x1, y1 in boxes[:k]:
                covered[y0:y1, x0:x1] = True
                ink = img[y0:y1, x0:x1] > 0
                assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
            assert not (img[~covered] > 0).any()


def test_single_digit_box_is_exactly_its_ink():
    _, s = _make("mnist_hard", count_range=(1, 1), test_count_range=(1, 1))
    for img, box in zip(s.train.images[:, 0], s.train.boxes[:, 0]):
        assert _ink_box(img > 0) == tuple(box.astype(int))


def test_compose_boxes_tight_on_each_digit_even_overlapping_and_off_canvas_cells():
    d, _ = prepared_digits(None, 20)
    idx = np.array([[0, 1, 2, -1]])
    ink = d.ink[idx[0, :3]]
    top = np.array([[10, 20, 80 - ink[2, 3], 0]])   # digit 2: ink on the bottom edge, cell off the canvas
    left = np.array([[12, 18, -ink[2, 0], 0]])      # digit 2: ink on the left edge
    full = compose(d, idx, top, left, 80)
    solo = []
    for l in range(3):
        one = np.full_like(idx, -1)
        one[0, l] = idx[0, l]
        img = compose(d, one, top, left, 80).images[0, 0]
        assert _ink_box(img > 0) == tuple(full.boxes[0, l].astype(int))
        solo.append(img)
    assert np.array_equal(full.images[0, 0], np.max(solo, 0))  # overlaps composite with max
    assert full.counts.tolist() == [3] and full.labels[0, 3] == -1


def test_easy_is_sorted_distinct_and_near_grid_centres():
    _, s = _make("mnist_easy")
    d = s.train
    assert (np.diff(d.labels, axis=1) > 0).all()
    centres = (d.boxes[..., :2] + d.boxes[..., 2:]) / 2  # (N, 9, 2) x, y
    grid = (np.stack([np.arange(9) % 3, np.arange(9) // 3], 1) + 0.5) * 80 / 3  # (9, 2)
    assert np.abs(centres - grid).mean() < 6 and np.abs(centres - grid).max() < 20


def test_hard_respects_min_distance_and_test_count_range():
    cfg, s = _make("mnist_hard_k9", test_count_range=(2, 4), min_distance=18)
    assert (s.train.counts == 9).all() and ((s.test.counts >= 2) & (s.test.counts <= 4)).all()
    assert s.train.boxes.shape[1] == s.test.boxes.shape[1] == 9
    for name, rng in (("mnist_hard_k6_9", (6, 9)), ("mnist_hard_k3_9", (3, 9)), ("mnist_hard_k1_9", (1, 9))):
        assert dataset_config(name, {}).count_range == rng == dataset_config(name, {}).test_counts


def test_mnist_hard_is_the_papers_nine_digits_in_both_splits():
    """The authors' code reads 9 labels and 9 keypoints per image (K = 9); Table 3's reference row is {9}."""
    _, s = _make("mnist_hard", n_train=40)
    assert (s.train.counts == 9).all() and (s.test.counts == 9).all()
    assert (s.train.labels >= 0).all() and s.train.boxes.shape[1] == 9


def test_uneven_is_more_clustered_than_hard():
    def spread(name):
        _, s = _make(name, count_range=(6, 6), n_train=40)
        c = (s.train.boxes[..., :2] + s.train.boxes[..., 2:]) / 2
        return np.linalg.norm(c - c.mean(1, keepdims=True), axis=-1).mean()
    assert spread("mnist_uneven") < 0.85 * spread("mnist_hard")


@pytest.mark.parametrize("over, field", [
    ({"count_range": (5, 3)}, "count_range"),
    ({"count_range": (-1, 3)}, "count_range"),
    ({"count_range": (0, 0)}, "count_range"),
    ({"test_count_range": (4, 2)}, "test_count_range"),
    ({"count_range": (1, 30)}, "count_range maximum 30 cannot fit"),
    ({"canvas": 20}, "canvas=20"),
    ({"digit_size": "20"}, "digit_size"),
    ({"n_train": -1}, "n_train"),
])
def test_bad_mnist_configs_name_the_field(over, field):
    with pytest.raises(ConfigError, match=field):
        dataset_config("mnist_hard", over)


def test_unplaceable_digits_stop_with_one_error_and_no_cache_file(tmp_path):
    # passes the packing bound (14 at min_distance 20) but dart throwing jams near 9 digits
    cfg = dataset_config("mnist_hard", {"n_train": 20, "n_test": 2, "count_range": (13, 13), "min_distance": 20})
    with pytest.raises(DataError, match="could not place 13 digits"):
        load_splits(cfg, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_subset_is_the_first_n_samples_of_every_array():
    _, s = _make("mnist_hard")
    sub = s.train.subset(3)
    assert isinstance(sub, MultiInstanceData) and len(sub) == 3
    for key, full in s.train.arrays().items():
        part = sub.arrays()[key]
        assert part.dtype == full.dtype and np.array_equal(part, full[:3]), key
