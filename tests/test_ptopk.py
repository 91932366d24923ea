"""The perturbed top-K method (baselines/ptopk.py): shapes, the sigma -> 0 limit, the gradient estimator.

What is testable about the gradient. The training gradient is a Monte-Carlo estimate, E_n[<g, Y_n> Z_n] / sigma, of
the gradient of the SMOOTHED objective F(s) = E_Z[<W, Y(s + sigma Z)>]. With a fixed noise sample (common random
numbers) the sample mean F_N(s) = mean_n <W, Y(s + sigma Z_n)> is piecewise constant in s, so its finite difference
is 0 or a jump, never the estimator; comparing the two would test nothing. Two checks instead:
  1. exactness of the code: with a fixed noise sample, autograd's gradient equals the estimator written out
     independently here (dense one-hot Y_n, the explicit outer-product Jacobian E[Y Z^T] / sigma), to float
     precision; and it differs from the published reference implementation's elementwise product.
  2. correctness of the estimator: on 3 pixels with K = 2 (top-2 of 3 = all but the minimum) F(s) has a
     one-dimensional integral form, computed by quadrature in float64; its central finite difference must match
     the estimator's mean over 200,000 copies within 4 standard errors (measured from the same samples).
Single-threaded, tiny sizes; the training check runs 30 smoke steps on 4 images of 40 x 40.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.ptopk import NON_MAX, PerturbedTopK, PerturbedTopKConfig, order_slots, perturbed_topk
from mist_core.config import ConfigError
from mist_core.keypoints import extract_topk
from mist_core.method import IntRange, LogUniform
from mist_core.mist import MIST
from mist_core.types import DataSpec
from test_contract import tiny_batch

SPEC = DataSpec(channels=1, height=40, width=40, n_classes=10, max_instances=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(task: str = "recon", seed: int = 0, **overrides) -> PerturbedTopK:
    torch.manual_seed(seed)
    return PerturbedTopK(PerturbedTopK.make_config("smoke", overrides), SPEC, task)


def as_set(kp: torch.Tensor) -> list[list[tuple[float, ...]]]:
    """(B, K, C) -> per image, the K rows as a sorted list of rounded tuples (order-free comparison)."""
    return [sorted(tuple(round(float(v), 4) for v in row) for row in img) for img in kp]


# --- config --------------------------------------------------------------------------------------------------------
def test_config_presets_and_search_space():
    for scale in ("smoke", "quick", "paper"):
        cfg = PerturbedTopK.default_config(scale)
        assert isinstance(cfg, PerturbedTopKConfig)
        assert cfg.model_dump().items() >= MIST.default_config(scale).model_dump().items()
        assert cfg.sigma > 0 and cfg.n_samples >= 1
    space = PerturbedTopK.search_space()
    assert isinstance(space["sigma"], LogUniform) and isinstance(space["n_samples"], IntRange)
    assert space["lr_task"] == MIST.search_space()["lr_task"] and "kp_lr" not in space   # lifting fields unused
    for bad in ({"sigma": 0.0}, {"n_samples": 0}, {"slot_order": "score"}):
        with pytest.raises(ConfigError):
            PerturbedTopK.make_config("smoke", bad)


# --- shapes --------------------------------------------------------------------------------------------------------
def test_expected_indicator_shapes_and_mass():
    torch.manual_seed(0)
    B, D, K, N = 2, 12, 3, 5
    ebar = perturbed_topk(torch.rand(B, D), K, 0.3, N)
    assert ebar.shape == (B, K, D)
    assert torch.allclose(ebar.sum(2), torch.ones(B, K))                   # each slot: one pixel per copy
    assert (ebar.sum(1) <= 1 + 1e-6).all()                                 # each pixel: at most one slot per copy
    assert torch.allclose(ebar * N, (ebar * N).round(), atol=1e-5)         # counts over N copies


def test_method_keypoint_shapes():
    m = build()
    images = tiny_batch().images                                           # (4, 1, 40, 40)
    h_scales, h = m.heat(images)
    kp, ebar, attrs = m.perturbed_keypoints(h_scales, h)
    assert kp.shape == (4, m.cfg.k, 3) and ebar.shape == (4, m.cfg.k, 1600) and attrs.shape == (4, 1600, 3)
    assert torch.allclose(attrs[0, 41, :2], torch.tensor([1.5, 1.5]))       # pixel (row 1, column 1)
    assert torch.allclose(kp[..., 2], torch.full_like(kp[..., 2], m.cfg.sizes[0]))   # one scale: sizes[0]
    assert kp.requires_grad                                                # differentiable in the heatmap


# --- sigma -> 0: the hard top-K --------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [(20.0,), (12.0, 16.0, 20.0)])
def test_small_sigma_is_the_hard_topk(sizes):
    m = build(sigma=1e-6, n_samples=4, sizes=sizes)
    images = torch.rand(3, 1, 40, 40)
    with torch.no_grad():
        h_scales, h = m.heat(images)
        kp, ebar, _ = m.perturbed_keypoints(h_scales, h)
        hard, _ = extract_topk(h_scales, h, m.sizes, m.cfg.k, m.cfg.nms_window)   # (B, K, 3)
    assert ((ebar == 0) | (ebar == 1)).all()                               # every copy picked the same pixels
    assert torch.allclose(kp, hard, atol=1e-4)                             # E_K's keypoints in E_K's order
    # the training keypoints at sigma -> 0 are predict's (MIST's E_K, keep_inside applied)
    pred = m.eval().predict(images)
    assert as_set(m.keep_inside(kp, 40, 40)) == as_set(pred.extras["keypoints"])


def test_nonmaxima_are_finite_and_never_selected():
    m = build(sigma=0.5, n_samples=64)
    h = torch.rand(2, 40, 40)
    s = m.selection_scores(h)
    assert torch.isfinite(s).all() and (s == NON_MAX).any()
    ebar = perturbed_topk(s, m.cfg.k, m.cfg.sigma, m.cfg.n_samples)
    assert (ebar.sum(1)[s == NON_MAX] == 0).all()


def test_slot_order_is_by_clean_score_then_position():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2]])                      # (1, 5); pixels 1 and 3 tie
    idx = torch.tensor([[[4, 3, 1], [1, 2, 3]]])                           # (1, N=2, K=3) in noisy order
    assert order_slots(idx, scores).tolist() == [[[1, 3, 4], [1, 3, 2]]]


# --- the gradient ----------------------------------------------------------------------------------------------
def dense_onehots(scores: torch.Tensor, noise: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Y_n for one image written out independently of baselines.ptopk: scores (D,), noise (N, D) -> (N, K, D)."""
    N, D = noise.shape
    Y = []
    for n in range(N):                                                     # test reference, not a training step
        sel = torch.topk(scores + sigma * noise[n], k).indices.tolist()
        sel = sorted(sel, key=lambda i: (-float(scores[i]), i))            # clean score, then position
        Y.append(F.one_hot(torch.tensor(sel), D).to(scores.dtype))         # (K, D)
    return torch.stack(Y)


def dense_estimator(scores, noise, W, k, sigma):
    """The perturbation estimator with dense one-hots and the explicit outer-product Jacobian (B, D):
    grad = W : E_n[Y_n (x) Z_n] / sigma."""
    B, N, D = noise.shape
    grads = []
    for b in range(B):
        Y = dense_onehots(scores[b], noise[b], k, sigma)                   # (N, K, D)
        jac = torch.einsum("nkd,ne->kde", Y, noise[b]) / (N * sigma)       # (K, D, D) E[Y Z^T] / sigma
        grads.append(torch.einsum("kd,kde->e", W[b], jac))
    return torch.stack(grads)


def test_backward_is_the_perturbation_estimator():
    g = torch.Generator().manual_seed(3)
    B, D, K, N, sigma = 2, 6, 2, 9, 0.3
    scores = torch.rand(B, D, generator=g, dtype=torch.float64).requires_grad_(True)
    noise = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    W = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    ebar = perturbed_topk(scores, K, sigma, noise=noise)
    Y = torch.stack([dense_onehots(scores.detach()[b], noise[b], K, sigma) for b in range(B)])  # (B, N, K, D)
    assert torch.allclose(ebar, Y.mean(1))                                  # forward: the mean one-hot
    (W * ebar).sum().backward()
    want = dense_estimator(scores.detach(), noise, W, K, sigma)
    assert torch.allclose(scores.grad, want, atol=1e-12)
    # the reference implementation's elementwise product ("bnkd,bnd->bkd") is another thing
    dot = torch.einsum("bkd,bkd->bd", W, torch.einsum("bnkd,bnd->bkd", Y, noise) / (N * sigma))
    assert not torch.allclose(dot, want, atol=1e-3)


def smoothed_top2_of_3(s: torch.Tensor, sigma: float, W: torch.Tensor) -> torch.Tensor:
    """F(s) = E_Z[<W, Y(s + sigma Z)>] exactly (quadrature, float64) for K = 2 of D = 3 pixels: the top-2 is every
    pixel but the minimum, and P(j is the minimum) = int phi(z) prod_{i != j} Phi((s_i - s_j) / sigma - z) dz."""
    z = torch.linspace(-10, 10, 40001, dtype=torch.float64)                 # (Q,)
    dz = z[1] - z[0]
    phi = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    Phi = lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2)))                 # noqa: E731
    total = torch.zeros((), dtype=torch.float64)
    for j in range(3):                                                     # the excluded pixel
        others = [i for i in range(3) if i != j]
        p = (phi * Phi((s[others[0]] - s[j]) / sigma - z) * Phi((s[others[1]] - s[j]) / sigma - z)).sum() * dz
        sel = sorted(others, key=lambda i: (-float(s[i]), i))              # slot order (fixed near s)
        total = total + p * (W[0, sel[0]] + W[1, sel[1]])
    return total


def test_gradient_matches_finite_difference_of_the_smoothed_objective():
    s0 = torch.tensor([0.30, 0.05, 0.20], dtype=torch.float64)
    sigma, N, h = 0.2, 200_000, 1e-4
    W = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.5, -1.0]], dtype=torch.float64)   # (K, D): slots weigh differently
    F_ = lambda s: smoothed_top2_of_3(s, sigma, W)                   # noqa: E731
    fd = torch.stack([(F_(s0 + h * e) - F_(s0 - h * e)) / (2 * h) for e in torch.eye(3, dtype=torch.float64)])  # (3,)
    assert fd.abs().max() > 0.5                                             # a non-trivial gradient

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, N, 3, generator=g, dtype=torch.float64)          # fixed: the test is deterministic
    s = s0[None].clone().requires_grad_(True)
    ebar = perturbed_topk(s, 2, sigma, noise=noise)                         # (1, 2, 3)
    (W[None] * ebar).sum().backward()
    # the estimator's standard error, from the per-copy terms c_n Z_n / sigma (N of them, averaged)
    with torch.no_grad():
        c = dense_terms(s0, noise[0], W, sigma)                           # (N, 3)
    se = c.std(0) / math.sqrt(N)
    assert torch.allclose(c.mean(0), s.grad[0], atol=1e-10)                  # the same estimate
    err = (s.grad[0] - fd).abs()
    assert (err < 4 * se + 1e-6).all(), f"estimator {s.grad[0].tolist()} vs finite difference {fd.tolist()} (se {se})"
    # and the same gradient is visible to a sample of E[Y] too: F_N(s) = <W, E_N[Y]> estimates F(s)
    assert abs(float((W[None] * ebar.detach()).sum()) - float(smoothed_top2_of_3(s0, sigma, W))) < 0.02


def dense_terms(s: torch.Tensor, noise: torch.Tensor, W: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-copy terms c_n Z_n / sigma (N, D) of the estimator for one image, vectorised over copies."""
    idx = order_slots((s[None] + sigma * noise).topk(2, dim=1).indices[None], s[None])[0]   # (N, 2)
    c = W[0, idx[:, 0]] + W[1, idx[:, 1]]                                   # (N,) <W, Y_n>
    return c[:, None] * noise / sigma


# --- training ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["recon", "classify"])
def test_training_lowers_the_task_loss_and_trains_the_heatmap(task):
    m = build(task)
    batch = tiny_batch()
    heat0 = [p.detach().clone() for p in m.heat.parameters()]
    hist = [m.train_step(batch) for _ in range(30)]
    assert list(hist[0]) == ["task", "slot_spread"]
    loss = [h["task"] for h in hist]
    assert all(math.isfinite(v) for v in loss)
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5, loss
    moved = sum(float((p.detach() - q).abs().sum()) for p, q in zip(m.heat.parameters(), heat0))
    assert moved > 0                                                        # the heatmap network is trained too

