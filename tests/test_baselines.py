"""Method-specific checks of the baselines (grid, channelwise, air, zhang, supervised)."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from baselines.air import AIR, bernoulli_kl, gaussian_kl
from baselines.channelwise import Channelwise, soft_argmax
from baselines.grid import Grid, grid_layout, rank_mask
from baselines.supervised import Supervised, gt_keypoints, instance_nll
from baselines.zhang import Zhang, equivariance_loss, landmarks, random_affine, warp
from mist_core.mist import MIST
from mist_core.presets import NETWORK_PRESETS, NetworkPreset, network_preset
from mist_core.registry import get_method, method_names
from mist_core.sampler import paste_patches, sample_patches
from mist_core.types import Batch, DataSpec

SPEC = DataSpec(1, 40, 40, 10, 3)


def _batch(B=2, H=40, W=40):
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[5.0, 6.0, 17.0, 18.0], [20.0, 22.0, 30.0, 36.0], [0.0, 0.0, 0.0, 0.0]]).expand(B, 3, 4)
    return Batch(torch.rand(B, 1, H, W, generator=g), torch.tensor([[3, 7, -1]]).expand(B, 3).clone(),
                 boxes.clone(), torch.full((B,), 2))


# --- the shared network presets -------------------------------------------------------------------------------
def _shared(method: str, p: NetworkPreset) -> dict:
    """The fields of `method`'s default config that come from the scale's network preset `p`, as they should be."""
    t, h, s = p.task, p.heatmap, sorted(p.heatmap.sizes)
    nets = dict(patch_res=t.patch_res, task_width=t.task_width, task_levels=t.task_levels, task_blocks=t.task_blocks)
    whole = {**t.model_dump(), **h.model_dump(), **p.mist.model_dump()}
    return {"mist": whole, "supervised": whole, "ptopk": whole, "mist_reach": whole, "trivial": {}, "kmeans": {},
            "grid": {**nets, "lr_task": t.lr_task}, "zhang": {"width": h.heat_width, "box_size": statistics.median(s)},
            "channelwise": {**nets, "lr": t.lr_task, "heat_width": h.heat_width, "heat_blocks": h.heat_blocks,
                            "size": statistics.median(s)},
            "air": {**nets, "size_prior": s[len(s) // 2], "size_min": 0.5 * s[0], "size_max": 1.5 * s[-1]}}[method]


def _moved(p: NetworkPreset) -> NetworkPreset:
    """Every field of `p` changed (ints + 1, floats x 2 + 1, sizes + 2 px), so a hard-coded copy no longer matches."""
    def bump(v):
        return tuple(x + 2 for x in v) if isinstance(v, tuple) else v + 1 if isinstance(v, int) else 2 * v + 1
    return NetworkPreset(**{k: {f: bump(v) for f, v in part.items()} for k, part in p.model_dump().items()})


@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
@pytest.mark.parametrize("method", method_names())
def test_default_configs_take_the_shared_fields_from_the_network_preset(method, scale, monkeypatch):
    for preset in (NETWORK_PRESETS[scale], _moved(NETWORK_PRESETS[scale])):
        monkeypatch.setitem(NETWORK_PRESETS, scale, preset)
        shared = _shared(method, preset)
        cfg = get_method(method).default_config(scale).model_dump()
        assert {k: cfg[k] for k in shared} == shared, f"{method} at {scale}"


# --- grid ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("g,H,W", [(3, 80, 80), (3, 40, 40), (2, 30, 30), (3, 60, 240)])
def test_grid_cells_tile_the_image(g, H, W):
    kp, boxes = grid_layout(g, H, W)
    K = boxes.shape[0]
    assert K == g * round(g * W / H)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert float(area.sum()) == pytest.approx(H * W)
    lo, hi = torch.maximum(boxes[:, None, :2], boxes[None, :, :2]), torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)                                 # (K, K)
    assert float(inter.sum() - inter.diagonal().sum()) == pytest.approx(0.0, abs=1e-6)  # no overlaps
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W + 1e-5).all() and (boxes[:, 3] <= H + 1e-5).all()
    assert torch.allclose(kp[:, 2], boxes[:, 2] - boxes[:, 0]) and torch.allclose(kp[:, 2], boxes[:, 3] - boxes[:, 1])
    # S^-1 of all-ones cell patches is a partition of unity away from the image border, where bilinear
    # interpolation fades over half a patch pixel (cell / (2 p) image pixels)
    ones = paste_patches(torch.ones(1, K, 1, 8, 8), kp[None], H, W, max_size=float(kp[0, 2]))[0, 0]
    m = math.ceil(float(kp[0, 2]) / 16)
    assert torch.allclose(ones[m:-m, m:-m], torch.ones(H - 2 * m, W - 2 * m), atol=1e-5)


def test_grid_refuses_non_square_cells():
    with pytest.raises(ValueError, match="square"):
        grid_layout(3, 40, 50)


def test_grid_recon_of_constant_image_and_scores():
    torch.manual_seed(0)
    m = Grid(Grid.default_config("smoke"), SPEC, "recon").eval()
    pred = m.predict(torch.full((3, 1, 40, 40), 0.5), None).check(3, SPEC)
    assert pred.recon.shape == (3, 1, 40, 40) and pred.boxes.shape == (3, 9, 4)
    assert torch.allclose(pred.scores, pred.patches.flatten(2).mean(2))   # decoded ink
    ps = sample_patches(torch.full((1, 1, 40, 40), 0.5), m.cell_kp[None], 8)
    assert torch.allclose(ps, torch.full_like(ps, 0.5), atol=1e-6)          # cells sample inside the image


def test_rank_mask_selects_top_count():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])
    assert rank_mask(s, torch.tensor([2, 1])).tolist() == [[False, True, True, False], [True, False, False, False]]


def test_grid_classify_uses_the_inked_cells():
    torch.manual_seed(0)
    m = Grid(Grid.default_config("smoke"), SPEC, "classify").eval()
    img = torch.zeros(1, 1, 40, 40)
    img[..., 2:10, 30:38] = 1.0                                             # top-right cell (index 2)
    pred = m.predict(img, torch.tensor([1]))
    assert int(pred.scores[0].argmax()) == 2 and pred.class_probs.shape == (1, 9, 10)


# --- channelwise ----------------------------------------------------------------------------------------------
def test_soft_argmax_of_a_delta_is_its_pixel_centre():
    logits = torch.zeros(2, 3, 20, 30)
    for k, (y, x) in enumerate([(0, 0), (7, 12), (19, 29)]):
        logits[:, k, y, x] = 100.0
    xy, prob = soft_argmax(logits, 1.0)
    assert torch.allclose(xy[0], torch.tensor([[0.5, 0.5], [12.5, 7.5], [29.5, 19.5]]), atol=1e-4)
    assert torch.allclose(prob.sum((2, 3)), torch.ones(2, 3))
    xy_flat, _ = soft_argmax(torch.zeros(1, 1, 20, 30), 1.0)               # uniform -> image centre
    assert torch.allclose(xy_flat, torch.tensor([[[15.0, 10.0]]]))
    xy_hot, _ = soft_argmax(logits / 100, 0.01)                            # temperature sharpens
    assert torch.allclose(xy_hot, xy, atol=1e-3)


@pytest.mark.parametrize("task", ["recon", "classify"])
def test_channelwise_trains_end_to_end(task):
    """One Adam step on the task loss moves the heatmap network (gradient through S to the soft-argmax)."""
    torch.manual_seed(0)
    m = Channelwise(Channelwise.default_config("smoke"), SPEC, task)
    assert m.cfg.size == 20.0 and m.cfg.patch_res == network_preset("smoke").task.patch_res
    before = [p.detach().clone() for p in m.heat.parameters()]
    m.train_step(_batch())
    assert all(not torch.equal(a, p) for a, p in zip(before, m.heat.parameters()))
    pred = m.eval().predict(_batch().images, torch.tensor([1, 2]))
    assert (pred.boxes[..., 2] - pred.boxes[..., 0] == 20.0).all()


# --- supervised -----------------------------------------------------------------------------------------------
def test_supervised_keypoints_from_boxes():
    b = _batch()
    kp, valid = gt_keypoints(b.boxes, b.counts, 12.0, 14.0)
    assert valid[0].tolist() == [True, True, False]
    assert kp[0, 0].tolist() == [11.0, 12.0, 12.0]                          # 12 x 12 box
    assert kp[0, 1].tolist() == [25.0, 29.0, 14.0]                          # 10 x 14 box -> side 14
    assert kp[0, 2, 0] < -14 and kp[0, 2, 1] < -14                          # padding off the canvas
    pasted = paste_patches(torch.ones(2, 3, 1, 8, 8), kp, 40, 40, max_size=14.0, reduce=False)  # (B, L, C, H, W)
    assert pasted[:, 2].abs().max() == 0 and pasted[:, 0].sum() > 0
    kp2, _ = gt_keypoints(b.boxes, b.counts, 16.0, 24.0)
    assert kp2[0, :2, 2].tolist() == [16.0, 16.0]                           # clamped to MIST's size range


def test_instance_nll():
    probs = torch.full((1, 3, 10), 0.1)
    labels, valid = torch.tensor([[1, 2, -1]]), torch.tensor([[True, True, False]])
    assert float(instance_nll(probs, labels, valid)) == pytest.approx(math.log(10), rel=1e-5)
    sure = torch.nn.functional.one_hot(torch.tensor([[1, 2, 0]]), 10).float()
    assert float(instance_nll(sure, labels, valid)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("task", ["recon", "classify"])
def test_supervised_is_mist_with_ground_truth(task):
    assert Supervised.predict is MIST.predict and issubclass(Supervised, MIST)
    torch.manual_seed(0)
    m = Supervised(Supervised.default_config("smoke"), SPEC, task)
    assert m.cfg.model_dump().items() >= MIST.default_config("smoke").model_dump().items()
    heat0 = [p.detach().clone() for p in m.heat.parameters()]
    out = m.train_step(_batch())
    assert set(out) == {"task", "heat"}
    assert all(not torch.equal(a, p) for a, p in zip(heat0, m.heat.parameters()))


# --- AIR ------------------------------------------------------------------------------------------------------
def test_air_kls_vanish_at_the_prior():
    assert float(bernoulli_kl(torch.tensor(0.01), 0.01)) == pytest.approx(0.0, abs=1e-6)
    assert float(bernoulli_kl(torch.tensor(0.9), 0.01)) > 3.0                # presence is costly under the prior
    mu, std = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    assert torch.allclose(gaussian_kl(mu, std, mu, std), torch.zeros(4), atol=1e-6)
    assert (gaussian_kl(mu, std, 0.0, 1.0) >= 0).all()


@pytest.mark.parametrize("bias,count", [(30.0, 4), (-30.0, 0)])
def test_air_count_follows_z_pres(bias, count):
    torch.manual_seed(0)
    m = AIR(AIR.make_config("smoke", {"max_steps": 4}), SPEC, "recon").eval()
    with torch.no_grad():
        m.net.pres_where.weight[0].zero_()
        m.net.pres_where.bias[0] = bias
    pred = m.predict(torch.rand(3, 1, 40, 40)).check(3, SPEC)
    assert pred.extras["count"].tolist() == [count] * 3 and pred.boxes.shape == (3, 4, 4)
    assert (pred.scores[:, 1:] <= pred.scores[:, :-1]).all()                # cumulative presence probability
    if count == 0:
        assert pred.recon.abs().max() == 0


def test_air_presence_stops_for_good_and_prior_terms():
    torch.manual_seed(0)
    m = AIR(AIR.make_config("smoke", {"max_steps": 5}), SPEC, "recon")
    r = m.infer(torch.rand(6, 1, 40, 40), sample=True)
    assert r["pres"].shape == (6, 5) and ((r["pres"] >= 0) & (r["pres"] <= 1)).all()
    assert (r["pres"][:, 1:] <= r["pres"][:, :-1] + 1e-6).all()               # p_t = prod z_s never grows
    assert torch.equal(r["prev"][:, 1:], r["pres"][:, :-1]) and (r["prev"][:, 0] == 1).all()
    loss, parts = m.neg_elbo(torch.rand(6, 1, 40, 40), r)
    assert loss.shape == (6,) and all((v >= -1e-5).all() for v in parts.values())
    kp = m.where_to_kp(torch.zeros(1, 3))                                   # z_where = 0: centred, mid-range side
    assert kp[0].tolist() == pytest.approx([20.0, 20.0, (m.cfg.size_min + m.cfg.size_max) / 2])
    assert m.where_to_kp(torch.tensor([[-50.0, -50, 50]]))[0].tolist() == pytest.approx([0.0, 40.0, m.cfg.size_min])
    assert m.where_to_kp(torch.tensor([[m.net.scale_mu0, 0.0, 0.0]]))[0, 2] == pytest.approx(m.cfg.size_prior)


# --- Zhang -----------------------------------------------------------------------------------------------------
def test_landmarks_of_a_delta_and_identity_equivariance():
    masks = torch.zeros(1, 2, 20, 20)
    masks[0, 0, 4, 9] = masks[0, 1, 15, 0] = 1.0
    mu, var = landmarks(masks)
    assert torch.allclose(mu[0], torch.tensor([[9.5 / 10 - 1, 4.5 / 10 - 1], [0.5 / 10 - 1, 15.5 / 10 - 1]]))
    assert var.abs().max() < 1e-6
    torch.manual_seed(0)
    m = Zhang(Zhang.default_config("smoke"), SPEC, "recon")
    img = torch.rand(2, 1, 40, 40)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    assert torch.allclose(warp(img, identity), img, atol=1e-6)
    with torch.no_grad():
        mu = landmarks(m.net.detect(img)[0][:, :-1])[0]
        mu_w = landmarks(m.net.detect(warp(img, identity))[0][:, :-1])[0]
    assert float(equivariance_loss(mu, mu_w, identity).max()) < 1e-8


def test_equivariance_convention_with_an_equivariant_detector():
    """A blob's centre of mass is exactly equivariant: the loss is ~0 for a real rotation + zoom + shift."""
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = torch.exp(-((x - 25.5) ** 2 + (y - 36.5) ** 2) / (2 * 3.0**2))[None, None]   # (1, 1, 64, 64)
    c = Zhang.default_config("smoke").replace(rot_max=0.5, scale_max=0.2, shift_max=0.2)
    torch.manual_seed(0)
    theta = random_affine(1, c, "cpu")
    assert not torch.allclose(theta, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    mu, mu_w = landmarks(blob)[0], landmarks(warp(blob, theta))[0]
    assert (mu_w - mu).abs().max() > 0.02                                   # the blob did move...
    assert float(equivariance_loss(mu, mu_w, theta)) < 1e-4                 # ...and theta maps it back
    still = random_affine(3, c.replace(rot_max=0.0, scale_max=0.0, shift_max=0.0), "cpu")
    assert torch.allclose(still, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))


def test_air_pres_prior_anneals_and_is_checkpointed():
    m = AIR(AIR.make_config("smoke", {"pres_prior_start": 0.99, "pres_prior": 0.01, "pres_anneal_steps": 4}),
            SPEC, "recon")
    assert float(m.current_pres_prior()) == pytest.approx(0.99)
    m.steps.fill_(2)
    assert float(m.current_pres_prior()) == pytest.approx(0.5)             # halfway in log-odds
    m.steps.fill_(10)
    assert float(m.current_pres_prior()) == pytest.approx(0.01)
    assert float(m.state_dict()["extra"]["steps"]) == 10
    m.train_step(_batch())                                                  # a step advances the device counter
    assert float(m.steps) == 11
    m.load_extra_state({"steps": 3})                                        # in place: a captured step reads it
    assert float(m.steps) == 3 and float(m.current_pres_prior()) == pytest.approx(0.0913, abs=1e-4)  # 3/4 in log-odds


# --- the non-learned k-means floor ------------------------------------------------------------------------------
def test_kmeans_floor_finds_separated_blobs_by_hand():
    """Two 4x4 squares (centres (6, 8) and (26, 24) px) and a dim pixel below the ink threshold: each cluster
    lands on a square's centre, its box is the configured side, and the reconstruction keeps only the boxes' pixels."""
    from baselines.kmeans import KMeansFloor
    from mist_core.types import DataSpec
    img = torch.zeros(1, 1, 32, 32)
    img[0, 0, 6:10, 4:8] = 1.0              # x 4..8, y 6..10 -> centre (6, 8)
    img[0, 0, 22:26, 24:28] = 0.5           # centre (26, 24)
    img[0, 0, 0, 31] = 0.05                 # below ink=0.1: ignored
    m = KMeansFloor({"box_size": 10.0}, DataSpec(1, 32, 32), "recon")
    pred = m.predict(img, torch.tensor([2]))
    centres = sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in pred.boxes[0].tolist())
    assert centres == [pytest.approx((6.0, 8.0)), pytest.approx((26.0, 24.0))]
    assert (pred.boxes[0, :, 2] - pred.boxes[0, :, 0]).tolist() == [10.0, 10.0]
    assert sorted(pred.scores[0].tolist()) == pytest.approx([8.0, 16.0])          # ink mass of each square
    assert torch.equal(pred.recon[0, 0, 6:10, 4:8], img[0, 0, 6:10, 4:8]) and pred.recon[0, 0, 0, 31] == 0
    two = m.predict(torch.cat([img, img]), torch.tensor([2, 1]))                     # count 1: one live cluster
    assert two.scores[1].tolist().count(0.0) == 1 and two.scores[1].max() == pytest.approx(24.0)
