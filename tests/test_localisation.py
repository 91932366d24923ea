"""MIST must localise: on a trivially easy set (two bright squares on black) its detection rises well above the
untrained network's within a small number of steps. A regression in the lifted training (the x step, G, the
heatmap regression, E_K) shows here as detection that stays at its untrained level."""
from __future__ import annotations

import pytest
import torch

from mist_core import metrics
from mist_core.mist import MIST
from mist_core.types import Batch, DataSpec

H = W = 32
SIDE = 8
SPEC = DataSpec(channels=1, height=H, width=W, n_classes=10, max_instances=2)
CFG = dict(k=2, sizes=(8.0,), patch_res=8, heat_width=8, heat_blocks=2, softmax_window=7, task_width=4,
           task_levels=2, task_blocks=1, lr_task=3e-3, lr_heat=3e-3, kp_lr=1e4, kp_steps=2, kp_max_move=2.0,
           heat_sigma=1.0)


def squares(n: int, g: torch.Generator) -> Batch:
    """n images with two SIDE x SIDE squares of intensity 1 whose centres are >= 12 px apart; boxes to match."""
    corners = torch.randint(0, W - SIDE + 1, (n, 2, 2), generator=g)                # (n, 2, (x, y))
    for _ in range(20):                                                            # redraw pairs that are too close
        close = (corners[:, 0] - corners[:, 1]).abs().amax(-1) < 12
        if not close.any():
            break
        corners[close, 1] = torch.randint(0, W - SIDE + 1, (int(close.sum()), 2), generator=g)
    corners = corners[(corners[:, 0] - corners[:, 1]).abs().amax(-1) >= 12]
    n = len(corners)
    X = torch.arange(W)
    inx = (X[None, None] >= corners[..., :1]) & (X[None, None] < corners[..., :1] + SIDE)  # (n, 2, W)
    iny = (X[None, None] >= corners[..., 1:]) & (X[None, None] < corners[..., 1:] + SIDE)  # (n, 2, H)
    images = (iny[..., :, None] & inx[..., None, :]).any(1).float()[:, None]         # (n, 1, H, W)
    boxes = torch.cat([corners, corners + SIDE], -1).float()                       # (n, 2, 4)
    return Batch(images, torch.zeros(n, 2, dtype=torch.long), boxes, torch.full((n,), 2))


def detection(m: MIST, test: Batch) -> float:
    m.eval()
    pred = m.predict(test.images, test.counts)
    m.train()
    keep = torch.ones(pred.boxes.shape[:2], dtype=torch.bool)
    return metrics.detection_scores(pred.boxes, keep, None, test.boxes, test.labels, test.counts)["det_rate"]


@pytest.mark.parametrize("seed", [0, 1])
def test_mist_learns_to_find_bright_squares(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(100 + seed)
    test = squares(64, g)
    m = MIST(MIST.make_config("smoke", CFG), SPEC, "recon")
    before = detection(m, test)
    for _ in range(150):
        m.train_step(squares(16, g))
    after = detection(m, test)
    assert after >= 0.8 and after >= before + 0.3, (before, after)
