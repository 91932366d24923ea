"""MIST-reach (baselines/mist_reach.py): the window sum, the relocation step.

The relocation is checked with a perfect stand-in task network (it decodes each patch as the input patch), so the
task loss falls exactly when a patch moves onto ink no patch covered: two patches on one square, a second square
uncovered; one relocation round must move the lower-scored duplicate onto the second square and keep the other.
"""
from __future__ import annotations

import pytest
import torch

from baselines.mist_reach import MISTReach, MISTReachConfig, window_sum
from mist_core.config import ConfigError
from mist_core.mist import MIST
from mist_core.sampler import paste_patches, sample_patches
from mist_core.task import TaskOutput
from mist_core.types import Batch, DataSpec

SPEC = DataSpec(channels=1, height=40, width=40, n_classes=10, max_instances=3)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_config_extends_mist_and_checks_its_fields():
    for scale in ("smoke", "quick", "paper"):
        cfg = MISTReach.default_config(scale)
        assert isinstance(cfg, MISTReachConfig)
        assert cfg.model_dump().items() >= MIST.default_config(scale).model_dump().items()
    for bad in ({"relocations": -1}, {"centre_steps": -1}, {"dup_dist": -0.1}):
        with pytest.raises(ConfigError):
            MISTReach.make_config("smoke", bad)


def test_window_sum_of_a_delta_is_its_window():
    maps = torch.zeros(1, 9, 9)
    maps[0, 4, 4] = 2.0
    s = window_sum(maps, 3)                                                        # (1, 9, 9)
    assert torch.allclose(s[0, 3:6, 3:6], torch.full((3, 3), 2.0))
    assert float(s.sum()) == pytest.approx(18.0) and float(s[0, 2, 4]) == 0.0


class _PerfectDecoder(MISTReach):
    """A recon task network that reproduces every patch exactly: the loss is the ink no patch covers."""
    name = "mist_reach_perfect_decoder"

    def run_task(self, batch: Batch, kp: torch.Tensor) -> TaskOutput:
        H, W = batch.images.shape[-2:]
        patches = sample_patches(batch.images, kp, self.cfg.patch_res)                  # (B, K, C, p, p)
        canvases = paste_patches(patches, kp, H, W, max_size=self.cfg.sizes[-1], reduce=False)  # (B, K, C, H, W)
        recon = canvases.max(1).values                                                  # (B, C, H, W)
        loss = (batch.images - recon).pow(2).flatten(1).mean(1)                         # (B,)
        return TaskOutput(loss, patches, recon, None)


def test_relocation_moves_a_duplicate_onto_the_uncovered_square():
    torch.manual_seed(0)
    cfg = MISTReach.make_config("smoke", {"k": 2, "sizes": [12.0], "patch_res": 16})
    m = _PerfectDecoder(cfg, SPEC, "recon")
    images = torch.zeros(1, 1, 40, 40)
    images[0, 0, 4:16, 4:16] = 1.0                                                  # square A, centre (10, 10)
    images[0, 0, 24:36, 22:34] = 1.0                                                # square B, centre (28, 30)
    batch = Batch(images, torch.tensor([[1, 2]]), torch.zeros(1, 2, 4), torch.tensor([2]))
    x = torch.tensor([[[10.0, 10.0, 12.0], [11.0, 10.0, 12.0]]])                   # both on A
    scores = torch.tensor([[0.9, 0.5]])                                             # the second is the duplicate
    before = m.run_task(batch, x).loss
    new_x, out = m.relocate(batch, x, scores)
    loss = out.loss
    assert torch.equal(new_x[0, 0], x[0, 0])                                        # the higher-scored one stays
    assert torch.allclose(new_x[0, 1, :2], torch.tensor([28.0, 30.0]), atol=1.0)   # the duplicate goes to B
    assert float(loss) < float(before) and torch.allclose(loss, m.run_task(batch, new_x).loss)
    # nothing left to explain: a proposal that does not lower the loss is refused
    again, out2 = m.relocate(batch, new_x, scores, out)     # T_tau's outputs at new_x, reused
    assert torch.equal(again, new_x) and torch.equal(out2.loss, loss)


def test_zero_relocations_is_mists_keypoint_step():
    torch.manual_seed(0)
    from test_contract import tiny_batch
    batch = tiny_batch()
    reach = MISTReach(MISTReach.make_config("smoke", {"relocations": 0, "centre_steps": 0}), SPEC, "recon")
    mist = MIST(MIST.make_config("smoke", {}), SPEC, "recon")
    mist.load_state_dict(reach.state_dict())
    _, _, kp0, scores = reach.detect(batch.images)
    x_r, loss_r, stats = reach.keypoint_targets(batch, kp0, scores)
    x_m, loss_m, _ = mist.keypoint_targets(batch, kp0, scores)
    assert torch.allclose(x_r, x_m) and torch.allclose(loss_r, loss_m) and float(stats["relocated"]) == 0.0


def test_centring_moves_a_patch_onto_its_squares_centre():
    m = MISTReach(MISTReach.make_config("smoke", {"k": 2, "sizes": [12.0], "patch_res": 16}), SPEC, "recon")
    images = torch.zeros(1, 1, 40, 40)
    images[0, 0, 4:16, 4:16] = 1.0                                                  # square, centre (10, 10)
    batch = Batch(images, torch.tensor([[1, -1]]), torch.zeros(1, 2, 4), torch.tensor([1]))
    x = torch.tensor([[[14.0, 7.0, 12.0], [30.0, 30.0, 12.0]]])                     # on a corner; on no ink
    centre, dist = torch.tensor([10.0, 10.0]), []
    for _ in range(10):
        dist.append(float((x[0, 0, :2] - centre).norm()))
        x = m.centre(batch, x)
    assert all(b < a for a, b in zip(dist, dist[1:]))                               # every round closer
    assert torch.allclose(x[0, 0, :2], centre, atol=0.25)
    assert torch.equal(x[0, 1], torch.tensor([30.0, 30.0, 12.0]))                   # no ink: no move
