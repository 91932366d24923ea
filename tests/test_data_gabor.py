"""Gabor noise: the image is exactly its ground truth re-rendered, boxes hold the impulses, bad configs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mist_core.config import ConfigError
from mist_core.data import dataset_config, load_splits


def _rerender(d, i: int, truncation: float) -> np.ndarray:
    """Straight from the formula, impulse by impulse: sum_i w_i exp(-pi a^2 r^2) cos(2 pi F0 <x, w>)."""
    H, W = d.images.shape[2:]
    ys, xs = np.mgrid[0:H, 0:W] + 0.5  # pixel centres
    raw = np.zeros((H, W))
    for l in range(int(d.counts[i])):
        a, f0, th = d.extras["kernel_params"][i, d.extras["kernel_index"][i, l]]
        px, py = d.extras["positions"][i, l]
        dx, dy = xs - px, ys - py
        env = np.exp(-math.pi * a * a * (dx * dx + dy * dy))
        raw += d.extras["weights"][i, l] * np.where(env >= truncation, env * np.cos(2 * math.pi * f0 * (dx * math.cos(th) + dy * math.sin(th))), 0)
    return raw * d.extras["norm_scale"][i] + d.extras["norm_shift"][i]


@pytest.mark.parametrize("orientations", [(45.0,), (0.0, 60.0, 120.0)])
def test_rerendering_from_ground_truth_reproduces_the_image(orientations):
    cfg = dataset_config("gabor", {"n_train": 6, "n_test": 3, "orientations_deg": orientations, "canvas": 48})
    s = load_splits(cfg, use_cache=False)
    for d in (s.train, s.test):
        assert d.images.dtype == np.float32 and d.images.min() >= 0 and d.images.max() <= 1
        for i in range(len(d)):
            np.testing.assert_allclose(d.images[i, 0], _rerender(d, i, cfg.truncation), atol=2e-6)
        assert (d.labels == d.extras["kernel_index"]).all()
        assert d.labels.max() < len(orientations)
    # the stored kernel images are the kernels: a lone unit impulse renders as the kernel itself
    k = s.train.extras["kernels"][0, 0]
    assert k.shape[0] % 2 == 1 and abs(k[k.shape[0] // 2, k.shape[0] // 2] - 1) < 1e-6


def test_counts_boxes_and_determinism():
    cfg = dataset_config("gabor", {"n_train": 30, "n_test": 5, "count_range": (2, 12)})
    s, t = load_splits(cfg, use_cache=False), load_splits(cfg, use_cache=False)
    assert s.train.images.tobytes() == t.train.images.tobytes()
    d = s.train
    assert ((d.counts >= 2) & (d.counts <= 12)).all()
    live = np.arange(d.labels.shape[1])[None, :] < d.counts[:, None]
    pos, b = d.extras["positions"][live], d.boxes[live]
    assert ((b[:, 0] <= pos[:, 0]) & (pos[:, 0] <= b[:, 2]) & (b[:, 1] <= pos[:, 1]) & (pos[:, 1] <= b[:, 3])).all()
    assert (d.extras["weights"][live] > 0).all() and (d.labels[~live] == -1).all()


@pytest.mark.parametrize("over, field", [
    ({"count_range": (5, 2)}, "count_range"),
    ({"weight_range": (-1.0, 1.0)}, "weight_range"),
    ({"a": 0}, "a"),
    ({"orientations_deg": ()}, "orientations_deg"),
    ({"count_range": (60, 70), "mean_count": 2.0}, "no mass"),
])
def test_bad_gabor_configs_name_the_field(over, field):
    with pytest.raises(ConfigError, match=field):
        dataset_config("gabor", over)
