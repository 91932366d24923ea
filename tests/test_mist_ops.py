"""MIST's own operators: E_K, G, S, S^-1, the heatmap network, the task networks, and Algorithm 1's stages."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mist_core.heatmap import HeatmapNet, local_spatial_softmax
from mist_core.keypoints import extract_topk, gaussian_blur, nms, render_heatmap, scale_pool, sliding_max
from mist_core.mist import MIST
from mist_core.sampler import keypoint_boxes, paste_patches, sample_patches
from mist_core.tasknets import PatchAutoEncoder, PatchClassifier
from mist_core.types import Batch, DataSpec

SIZES = torch.tensor([12.0, 16.0, 24.0, 32.0])


@st.composite
def separated_keypoints(draw, H=48, W=48, window=5):
    """K keypoints at pixel centres, pairwise farther apart than the NMS window, sizes in range."""
    k = draw(st.integers(1, 6))
    cells = draw(st.lists(st.tuples(st.integers(0, H // 8 - 1), st.integers(0, W // 8 - 1)),
                          min_size=k, max_size=k, unique=True))
    kps = []
    for cy, cx in cells:  # one keypoint per 8x8 cell, offset so two are >= window apart in some axis... use cell centres
        ox, oy = draw(st.integers(0, 1)), draw(st.integers(0, 1))
        size = draw(st.floats(float(SIZES[0]), float(SIZES[-1]), allow_nan=False))
        kps.append([cx * 8 + 3 + ox + 0.5, cy * 8 + 3 + oy + 0.5, size])
    return torch.tensor([kps], dtype=torch.float32)


@settings(max_examples=60, deadline=None)
@given(separated_keypoints())
def test_topk_inverts_render(kp):
    """E_K(G(x)) = x (appendix B): locations exactly, scale up to float rounding."""
    H = W = 48
    hs = render_heatmap(kp, SIZES, H, W)                                  # (1, S, H, W)
    assert torch.allclose(hs.sum((1, 2, 3)), torch.tensor([float(kp.shape[1])]))  # unit mass per keypoint
    got, scores = extract_topk(hs, scale_pool(hs), SIZES, kp.shape[1], window=5)
    order = lambda t: t[0][torch.argsort(t[0, :, 1] * 1000 + t[0, :, 0])]  # noqa: E731
    assert torch.allclose(order(got), order(kp), atol=1e-4)
    assert (scores > 0).all()


@settings(max_examples=30, deadline=None)
@given(separated_keypoints())
def test_topk_inverts_the_blurred_render(kp):
    """A Gaussian-blurred G target (heat_sigma = 1 px) keeps E_K(G(x)) = x and each keypoint's unit mass."""
    H = W = 48
    hs = gaussian_blur(render_heatmap(kp, SIZES, H, W), 1.0)                    # (1, S, H, W)
    inner = (kp[0, :, :2] > 4).all() and (kp[0, :, :2] < H - 4).all()
    if inner:                                                             # the zero padding loses mass at the border
        assert torch.allclose(hs.sum(), torch.tensor(float(kp.shape[1])), atol=1e-4)
    got, _ = extract_topk(hs, scale_pool(hs), SIZES, kp.shape[1], window=5)
    order = lambda t: t[0][torch.argsort(t[0, :, 1] * 1000 + t[0, :, 0])]  # noqa: E731
    assert torch.allclose(order(got), order(kp), atol=1e-4)


def test_gaussian_blur_by_hand():
    """One unit spike, sigma 1: the centre keeps 1/(sum of the 1-D kernel)^2 of its mass, ratios exp(-d^2/2)."""
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    y = gaussian_blur(x, 1.0)
    k1 = torch.exp(-0.5 * torch.arange(-3, 4.0) ** 2).sum()
    assert y[0, 0, 4, 4] == pytest.approx(1 / float(k1) ** 2, rel=1e-5)
    assert y[0, 0, 4, 5] / y[0, 0, 4, 4] == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert y[0, 0, 5, 5] / y[0, 0, 4, 4] == pytest.approx(math.exp(-1.0), rel=1e-5)
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_render_splits_scale_between_neighbours():
    hs = render_heatmap(torch.tensor([[[5.5, 6.5, 14.0]]]), SIZES, 16, 16)
    assert hs[0, :, 6, 5].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert hs.sum() == pytest.approx(1.0)


def test_nms_keeps_only_local_maxima():
    torch.manual_seed(0)
    h = torch.rand(2, 20, 20)
    kept = torch.isfinite(nms(h, 5))
    padded = torch.nn.functional.pad(h, (2, 2, 2, 2), value=-1.0)
    for b in range(2):
        for i in range(20):
            for j in range(20):
                is_max = h[b, i, j] >= padded[b, i : i + 5, j : j + 5].max()
                assert bool(kept[b, i, j]) == bool(is_max)


@pytest.mark.parametrize("window", [1, 3, 9, 15])
def test_sliding_max_equals_a_stride_one_max_pool(window):
    """Ties included (small integers), windows longer than the axis, both axes; NMS keeps the same maxima."""
    torch.manual_seed(0)
    x = torch.randint(0, 4, (3, 11, 7)).float()                                       # (B, H, W)
    pool = torch.nn.functional.max_pool2d
    r = window // 2
    assert torch.equal(sliding_max(x, window, -1), pool(x[:, None], (1, window), 1, (0, r))[:, 0])
    assert torch.equal(sliding_max(x, window, -2), pool(x[:, None], (window, 1), 1, (r, 0))[:, 0])
    square = pool(x[:, None], window, 1, r)[:, 0]
    assert torch.equal(torch.isfinite(nms(x, window)), x >= square)


def test_topk_picks_highest_peaks_sorted():
    h = torch.zeros(1, 1, 30, 30)
    for (y, x, v) in [(5, 5, 0.5), (20, 10, 0.9), (25, 25, 0.7), (6, 6, 0.4)]:  # (6,6) is suppressed by (5,5)
        h[0, 0, y, x] = v
    kp, scores = extract_topk(h, h[:, 0], torch.tensor([16.0]), 3, 5)
    assert scores[0].tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert kp[0, :, :2].tolist() == [[10.5, 20.5], [25.5, 25.5], [5.5, 5.5]]
    assert kp[0, :, 2].tolist() == [16.0] * 3


def test_sampler_round_trip_non_overlapping():
    """S then S^-1 reproduces an image made of K non-overlapping patches (and S^-1 then S the patches)."""
    torch.manual_seed(0)
    B, C, H, W, p = 3, 2, 40, 40, 8
    kp = torch.tensor([[4.0, 4.0, 8.0], [20.0, 12.0, 8.0], [36.0, 36.0, 8.0], [12.0, 28.0, 8.0]]).expand(B, 4, 3)
    patches = torch.rand(B, 4, C, p, p)
    image = paste_patches(patches, kp, H, W, max_size=8.0)               # (B, C, H, W)
    assert image.shape == (B, C, H, W)
    back = sample_patches(image, kp, p)                                   # (B, K, C, p, p)
    assert torch.allclose(back, patches, atol=1e-6)
    assert torch.allclose(paste_patches(back, kp, H, W, max_size=8.0), image, atol=1e-6)
    assert (image.flatten(1).sum(1) - patches.flatten(1).sum(1)).abs().max() < 1e-3


def _paste_whole_canvas(patches, kp, height, width):
    """S^-1 by resampling every patch over the whole canvas: the reference the windowed paste must equal."""
    B, K, C, p, _ = patches.shape
    X, Y = torch.arange(width) + 0.5, torch.arange(height) + 0.5                      # pixel centres
    s = kp[..., 2:3]
    ux = 2 * (X - (kp[..., 0:1] - s / 2)) / s - 1                                     # (B, K, W)
    uy = 2 * (Y - (kp[..., 1:2] - s / 2)) / s - 1                                     # (B, K, H)
    grid = torch.stack([ux[:, :, None, :].expand(B, K, height, width),
                        uy[:, :, :, None].expand(B, K, height, width)], dim=-1)
    out = torch.nn.functional.grid_sample(patches.reshape(B * K, C, p, p), grid.reshape(B * K, height, width, 2),
                                          mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(B, K, C, height, width)


@pytest.mark.parametrize("reduce", [True, False])
def test_windowed_paste_equals_the_whole_canvas_paste_and_its_gradients(reduce):
    """Off-grid centres, mixed sizes, patches hanging over every border or wholly outside the image."""
    torch.manual_seed(0)
    B, K, C, p, H, W = 3, 5, 2, 8, 30, 36
    cxy = torch.rand(B, K, 2) * torch.tensor([W + 30.0, H + 30.0]) - 15              # some far outside
    kp = torch.cat([cxy, 6 + 14 * torch.rand(B, K, 1)], -1).requires_grad_(True)
    patches = torch.rand(B, K, C, p, p, requires_grad=True)
    weights = torch.rand(B, K, C, H, W)                                               # a loss that sees every pixel
    got = paste_patches(patches, kp, H, W, max_size=20.0, reduce=reduce)                # sizes in [6, 20)
    ref = _paste_whole_canvas(patches, kp, H, W)
    ref = ref.sum(1) if reduce else ref
    assert got.shape == ref.shape and (ref.abs() > 0).any()
    assert torch.allclose(got, ref, atol=1e-6), float((got - ref).abs().max())
    w = weights.sum(1) if reduce else weights
    g_got = torch.autograd.grad((got * w).sum(), [patches, kp])
    g_ref = torch.autograd.grad((ref * w).sum(), [patches, kp])
    for name, a, b in zip(["patches", "keypoints"], g_got, g_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (name, float((a - b).abs().max()))


def test_sampler_scales_and_differentiates():
    img = torch.zeros(1, 1, 32, 32)
    img[..., 8:24, 8:24] = 1.0
    kp = torch.tensor([[[16.0, 16.0, 16.0], [16.0, 16.0, 32.0]]])
    pt = sample_patches(img, kp, 8)                                       # (1, 2, 1, 8, 8)
    assert float(pt[0, 0].min()) == 1.0                                   # 16 px window inside the square
    assert float(pt[0, 1].mean()) == pytest.approx(0.25, abs=0.02)         # 32 px window: a quarter is lit
    assert keypoint_boxes(kp)[0, 0].tolist() == [8.0, 8.0, 24.0, 24.0]
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32).contiguous()     # brighter to the right
    kp = torch.tensor([[[12.0, 16.0, 8.0]]], requires_grad=True)
    sample_patches(ramp, kp, 8).sum().backward()
    assert kp.grad[0, 0, 0] > 0 and kp.grad[0, 0, 1].abs() < 1e-5        # moving right brightens the patch


def test_local_softmax_and_heatmap_shapes():
    net = HeatmapNet(1, 4, 1, (12.0, 18.0, 24.0))
    hs, h = net(torch.rand(2, 1, 36, 36))
    assert hs.shape == (2, 3, 36, 36) and h.shape == (2, 36, 36)
    assert (hs > 0).all() and (hs <= 1 + 1e-6).all() and torch.isfinite(h).all()
    flat = local_spatial_softmax(torch.zeros(1, 1, 31, 31), 15, 10.0)
    assert flat[0, 0, 15, 15] == pytest.approx(1 / 225)                    # uniform interior -> 1/window^2
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / 225), rtol=1e-4, atol=0)  # the border is not favoured


@pytest.mark.parametrize("window", [1, 5, 15])
def test_local_softmax_separable_pools_match_square_pools(window):
    """The separable window max and in-image mean give the square-window operator (values and gradients)."""
    import torch.nn.functional as F

    def square(r, eps=1e-6):
        z = 10.0 * r
        m = F.max_pool2d(z, window, stride=1, padding=window // 2).amax(1, keepdim=True)
        e = (z - m).exp()
        return e / (F.avg_pool2d(e, window, 1, window // 2, count_include_pad=False) * window**2 + eps)

    r = torch.randn(2, 3, 23, 29, generator=torch.Generator().manual_seed(1), requires_grad=True)
    a, b = square(r), local_spatial_softmax(r, window, 10.0)
    torch.testing.assert_close(b, a)
    ga, gb = (torch.autograd.grad((y * torch.arange(y.numel()).view_as(y).sin()).sum(), r)[0] for y in (a, b))
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)


def test_channels_last_networks_match_nchw(monkeypatch):
    """The heatmap and task networks run NHWC (speed); the same weights run NCHW give the same outputs."""
    import copy

    import mist_core.heatmap
    import mist_core.tasknets

    torch.manual_seed(0)
    cases = ((HeatmapNet(1, 4, 2, (12.0, 18.0)), torch.rand(2, 1, 36, 36)),
             (PatchAutoEncoder(3, 16, 4, 3, 1), torch.rand(5, 3, 16, 16)),
             (PatchClassifier(3, 16, 4, 3, 1), torch.rand(5, 3, 16, 16)))
    with torch.no_grad():
        fast = [net(x) for net, x in cases]
        assert all(any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                       for p in net.parameters()) for net, _ in cases)   # the fast path really is NHWC
        for mod in (mist_core.heatmap, mist_core.tasknets):
            monkeypatch.setattr(mod, "CHANNELS_LAST", torch.contiguous_format)
        slow = [copy.deepcopy(net).to(memory_format=torch.contiguous_format)(x) for net, x in cases]
    torch.testing.assert_close(fast, slow)


def test_task_networks_shapes_and_bottleneck():
    ae = PatchAutoEncoder(1, 32, 8, 5, 1)
    x = torch.rand(6, 1, 32, 32)
    y = ae(x)
    assert y.shape == x.shape and (y > 0).all() and (y < 1).all()
    assert ae.encoder(x).shape == (6, 128, 1, 1)                           # 5 levels: 32x32 -> 1x1
    assert PatchClassifier(3, 16, 4, 4, 1)(torch.rand(5, 3, 16, 16)).shape == (5, 10)
    with pytest.raises(ValueError, match="bottleneck"):
        PatchAutoEncoder(1, 16, 64, 2, 1)                                 # latent 128*4*4 > 256 inputs


def _batch(B=4, H=40, W=40, task="recon"):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (B, 3), generator=g)
    return Batch(torch.rand(B, 1, H, W, generator=g), labels, torch.zeros(B, 3, 4), torch.full((B,), 3))


@pytest.mark.parametrize("task", ["recon", "classify"])
def test_each_stage_updates_only_its_parameters(task):
    torch.manual_seed(0)
    m = MIST(MIST.make_config("smoke", {"k": 3, "sizes": (12.0, 16.0)}), DataSpec(1, 40, 40), task)
    b = _batch(task=task)
    snap = lambda mod: [p.detach().clone() for p in mod.parameters()]  # noqa: E731
    same = lambda a, mod: all(torch.equal(x, y) for x, y in zip(a, mod.parameters()))  # noqa: E731

    h_scales, _, kp0, _ = m.detect(b.images)
    heat0, head0 = snap(m.heat), snap(m.head)
    m.stage_task(b, kp0)
    assert same(heat0, m.heat) and not same(head0, m.head)
    assert all(not p.grad.any() for p in m.heat.parameters())            # no gradient reached the heatmap

    heat1, head1 = snap(m.heat), snap(m.head)
    x, loss = m.stage_keypoints(b, kp0)
    assert same(heat1, m.heat) and same(head1, m.head)
    assert all(not p.grad.any() for p in m.heat.parameters())            # no gradient reached the heatmap
    assert x.shape == kp0.shape and not x.requires_grad and loss.shape == (4,)

    head2 = snap(m.head)
    grads_before = [None if p.grad is None else p.grad.clone() for p in m.head.parameters()]
    m.stage_heatmap(h_scales, x, loss, m.valid_mask(b))
    assert same(head2, m.head) and not same(heat1, m.heat)
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad)
               for g, p in zip(grads_before, m.head.parameters()))


def _bright_square_case(overrides: dict):
    """A one-patch MIST whose task net has learnt to draw a 12 px bright square at (18, 16), and a keypoint 4 px
    off in each axis: the batch, the method and that keypoint (1, 1, 3)."""
    m = MIST(MIST.make_config("smoke", {"k": 1, "sizes": (16.0,), "lam": 0.0, **overrides}), DataSpec(1, 32, 32),
             "recon")
    img = torch.zeros(1, 1, 32, 32)
    img[..., 10:22, 12:24] = 1.0
    b = Batch(img, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 4), torch.ones(1, dtype=torch.long))
    for _ in range(30):                                                   # teach T to output a bright square
        m.stage_task(b, torch.tensor([[[18.0, 16.0, 16.0]]]))
    return m, b, torch.tensor([[[14.0, 12.0, 16.0]]])


def test_keypoint_step_lowers_the_task_loss():
    """With the task network fixed, the x step moves patches so the reconstruction loss falls."""
    torch.manual_seed(0)
    m, b, kp0 = _bright_square_case({"kp_lr": 3e3, "kp_steps": 1})
    before = m.run_task(b, kp0).loss
    x, after = m.stage_keypoints(b, kp0)
    assert (x - kp0)[0, 0, :2].abs().sum() > 0
    with torch.no_grad():
        assert float(m.run_task(b, x).loss) < float(before)


@pytest.mark.parametrize("task", ["recon", "classify"])
def test_accepted_keypoint_steps_never_raise_an_images_objective(task):
    """kp_accept: per image, the returned x has task loss + lambda ||x - x0||^2 no higher than x0's."""
    torch.manual_seed(0)
    m = MIST(MIST.make_config("smoke", {"k": 3, "sizes": (12.0, 16.0), "kp_lr": 1e6, "lam": 1e-4}),
             DataSpec(1, 40, 40), task)
    b = _batch(B=8, task=task)
    _, _, kp0, _ = m.detect(b.images)
    x, loss = m.stage_keypoints(b, kp0)
    with torch.no_grad():
        before = m.run_task(b, kp0).loss
        after = m.run_task(b, x).loss
    obj = after + m.cfg.lam * ((x - kp0) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(loss, after)                               # the loss it reports is x's
    assert (obj <= before + 1e-7).all()
    assert (x != kp0).any()                                               # and it does move some
    lo, hi = m.keep_inside(x, 40, 40), x
    torch.testing.assert_close(lo, hi)                                    # patches stay inside the image


@pytest.mark.parametrize("task", ["recon", "classify"])
def test_predict_shapes(task):
    m = MIST(MIST.make_config("smoke", {"k": 5}), DataSpec(1, 40, 40), task)
    pred = m.predict(torch.rand(3, 1, 40, 40), torch.tensor([1, 2, 3]))
    pred.check(3, DataSpec(1, 40, 40))
    assert pred.boxes.shape == (3, 5, 4) and (pred.scores[:, :-1] >= pred.scores[:, 1:]).all()
    assert (pred.recon is None) == (task == "classify") and (pred.class_probs is None) == (task == "recon")
