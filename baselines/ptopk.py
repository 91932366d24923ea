"""Perturbed top-K: MIST's networks with E_K relaxed by perturbed optimisation instead of lifted.

Cordonnier et al. 2021 ("Differentiable Patch Selection for Image Recognition", CVPR), built on the perturbed
optimisers of Berthet et al. 2020. Same H_eta (HeatmapNet) and T_tau (TaskHead) as MIST, MIST's presets; only the
training of the selection differs:
  scores  s = NMS(pooled heatmap) flattened (B, H*W); the non-maxima (-inf after mist_core.keypoints.nms) are set
          to NON_MAX, a large finite negative value, so that s + sigma Z is defined everywhere and a non-maximum is
          never selected while K local maxima exist. Gradient reaches the heatmap at its local maxima only (nms
          passes none to the suppressed pixels), as E_K would look at no other pixel either.
  select  N noisy copies s + sigma Z_n (Z_n ~ N(0, I)); the hard top-K of each, Y_n (B, N, K, H*W) one-hot rows,
          never materialised: only the indices (B, N, K) are kept. E[Y] ~ mean_n Y_n (B, K, H*W).
  slots   the K rows of Y_n must mean the same thing in every copy, or E[Y] averages unrelated keypoints (see
          order_slots): the selected pixels are ordered by their CLEAN score s (ties by position).
  kp      the keypoint of slot k is the expected pixel attribute under E[Y]: position sum_i E[Y]_ki (x_i+.5, y_i+.5)
          and size sum_i E[Y]_ki size_i, size_i the response-weighted scale of pixel i as in extract_topk
          (differentiable in h_scales; with one scale it is sizes[0]). That is, patches are sampled AT the expected
          keypoints, not as the expectation of the patches: Cordonnier et al. take sum_i E[Y]_ki P(x_i) (a weighted
          sum of patch extractions), which needs a patch for every selected pixel of every copy (up to N*K sampled
          patches per image, or H*W * p^2 values per slot) where this needs K; the price is that a slot whose
          pixel varies between copies is sampled between its candidates rather than as their blend.
  loss    the task loss of T_tau on those patches (eq. 8 / eq. 9, MIST's TaskHead), back-propagated into T_tau and,
          through the perturbed top-K, into H_eta: one Adam step each. No lifting, no keypoint steps, no G regression.
Gradient by the perturbation identity (Berthet et al. 2020, Prop. 3.1): d E[Y(s + sigma Z)] / ds = E[Y Z^T] / sigma,
estimated with the same N samples (PerturbedTopKFunction.backward).
predict() is MIST's (E_K, the hard top-K: the sigma -> 0 limit), so evaluation is comparable to MIST.
The config is MIST's plus sigma and n_samples; MIST's lifting fields (kp_lr, kp_steps,
kp_max_move, kp_accept, lam, heat_weight_temp, heat_sigma) are accepted and unused, so one set of MIST overrides
applies to both.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mist_core.keypoints import nms
from mist_core.method import IntRange, LogUniform, SearchSpace
from mist_core.mist import MIST, MISTConfig
from mist_core.sampler import sample_patches
from mist_core.types import Batch

__all__ = ["PerturbedTopK", "PerturbedTopKConfig", "PerturbedTopKFunction", "perturbed_topk", "order_slots",
           "NON_MAX"]

# Off-maximum score. The heatmap lies in [0, 1] (local softmax), so with sigma <= 10 (the config's bound) a non-maximum
# would need a noise difference of ~1000 standard deviations to overtake a local maximum.
NON_MAX = -1.0e4


class PerturbedTopKConfig(MISTConfig):
    sigma: float = Field(0.05, gt=0, le=10, description="noise std on the heatmap scores (the heatmap is in [0, 1])")
    # N noisy copies per image and step. The largest tensor is the noise (B, N, H*W) kept for backward: 26 MB at
    # B = 32, N = 32, 80 x 80 (the (B, N, K, H*W) one-hots, 9x that, are never built); N = 32 added ~10 ms to a
    # quick step over N = 16 (1 thread), and Cordonnier et al.'s N = 500 would hold 410 MB of noise.
    n_samples: int = Field(32, ge=1, description="noisy copies per image and step")


def order_slots(idx: Tensor, scores: Tensor) -> Tensor:
    """Order the K selected pixels of each copy (B, N, K) by their CLEAN score (ties by position), so that slot k
    means the same thing in every copy.

    E[Y] is a mean over copies slot by slot. topk's own order (the NOISY rank) swaps two instances whose scores are
    within sigma from copy to copy, and both slots land half-way between them. Cordonnier et al. order by pixel
    index; with K above the number of confident peaks (K = 9 for 1-9 digits) the uncertain background picks
    interleave with the confident ones in raster order. By clean score, the copies differ mostly in their
    low-score picks, which sort last; the first `count` slots are the highest-scoring (the classification loss's
    instance_mask), and at sigma -> 0 this is E_K's order. The order is piecewise constant in s, so the
    perturbation gradient is E[Y]'s wherever the selected clean scores are distinct.
    idx (B, N, K) long, scores (B, D) clean scores -> (B, N, K) reordered.
    """
    idx = idx.sort(dim=2).values                                                    # (B, N, K) by position
    B, N, K = idx.shape
    sel = scores.gather(1, idx.reshape(B, N * K)).view(B, N, K)                     # (B, N, K) clean scores
    rank = sel.sort(dim=2, descending=True, stable=True).indices                    # (B, N, K) ties keep position
    return idx.gather(2, rank)


class PerturbedTopKFunction(torch.autograd.Function):
    """scores (B, D), noise (B, N, D) -> E_n[Y(scores + sigma noise_n)] (B, K, D): the mean over copies of the
    one-hot top-K (each copy's K rows are one-hot, ordered by order_slots); the estimator of Berthet et al.

    backward: for the upstream gradient g (B, K, D) on the expected indicator, the perturbation identity gives
        grad_s = g : dE[Y]/ds,  dE[Y]_kd/ds_e = E[Y_kd Z_e] / sigma   (an OUTER product of Y and Z per copy)
               = E_n[ <g, Y_n> Z_n ] / sigma,     <g, Y_n> = sum_{k,d} g_kd Y_nkd = sum_k g[k, idx_nk]
    so <g, Y_n> is g gathered at the selected indices (B, N, K) summed over K, and nothing of size (B, N, K, D) is
    built. Published correction: the reference implementation of Cordonnier et al. used the transposed
    Jacobian and a dot product where this outer product was meant (an elementwise Y_nkd Z_nd, "bnkd,bnd->bkd",
    where the Jacobian needs Y_nkd Z_ne for every pair (d, e), "bnkd,bne->bkde"); neither is E[Y Z^T]/sigma applied
    to g. Here the (B, K, D, D) Jacobian is never formed; tests/test_ptopk.py checks the result against the explicit
    outer-product Jacobian and against a finite difference of the exactly computed smoothed objective.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, k: int, sigma: float, noise: Tensor) -> Tensor:
        B, D = scores.shape
        N = noise.shape[1]
        perturbed = scores[:, None, :] + sigma * noise                                # (B, N, D)
        idx = perturbed.topk(k, dim=2, sorted=False).indices                          # (B, N, K)
        idx = order_slots(idx, scores)                                                # (B, N, K)
        idx_k = idx.transpose(1, 2)                                                   # (B, K, N)
        ebar = scores.new_zeros(B, k, D).scatter_add_(2, idx_k, scores.new_full(idx_k.shape, 1.0 / N))  # (B, K, D)
        ctx.save_for_backward(idx_k, noise)
        ctx.sigma = sigma
        return ebar

    @staticmethod
    def backward(ctx, g: Tensor):
        idx_k, noise = ctx.saved_tensors                                              # (B, K, N), (B, N, D)
        N = noise.shape[1]
        gy = g.gather(2, idx_k).sum(1)                                                # (B, N) <g, Y_n>
        grad = torch.einsum("bn,bnd->bd", gy, noise) / (N * ctx.sigma)                # (B, D)
        return grad, None, None, None


def perturbed_topk(scores: Tensor, k: int, sigma: float, n_samples: int = 32, noise: Tensor | None = None) -> Tensor:
    """Expected top-K indicator (B, K, D) of scores (B, D) (all finite) under Gaussian noise of std sigma.

    `noise` (B, N, D) fixes the standard normal sample (default: drawn from torch's global generator, N = n_samples).
    """
    if noise is None:
        noise = torch.randn(scores.shape[0], n_samples, scores.shape[1], device=scores.device, dtype=scores.dtype)
    return PerturbedTopKFunction.apply(scores, k, float(sigma), noise)


class PerturbedTopK(MIST):
    name = "ptopk"
    step_draws_noise = True   # the perturbed top-k's Gaussian noise
    Config = PerturbedTopKConfig

    @classmethod
    def default_config(cls, scale: str) -> PerturbedTopKConfig:
        return PerturbedTopKConfig(**MIST.default_config(scale).model_dump())

    @classmethod
    def search_space(cls) -> SearchSpace:
        """MIST's ranges for the fields this method uses (the learning rates; MIST's lifting fields are unused here
        and would only dilute a sweep), plus sigma and N."""
        space = {k: v for k, v in MIST.search_space().items() if k in ("lr_task", "lr_heat")}
        return {**space, "sigma": LogUniform(1e-3, 0.5), "n_samples": IntRange(4, 64)}

    # --- the relaxed E_K -------------------------------------------------------------------------
    def selection_scores(self, h: Tensor) -> Tensor:
        """Pooled heatmap (B, H, W) -> NMS-suppressed scores (B, H*W), non-maxima at NON_MAX (finite)."""
        B, H, W = h.shape
        s = nms(h, self.cfg.nms_window).view(B, H * W)                                  # (B, HW), -inf off maxima
        return torch.where(torch.isfinite(s), s, s.new_full((), NON_MAX))               # grad only at the maxima

    def pixel_attributes(self, h_scales: Tensor) -> Tensor:
        """(B, S, H, W) -> (B, H*W, 3): each pixel's centre (x + .5, y + .5) and response-weighted size (as E_K)."""
        B, S, H, W = h_scales.shape
        w = h_scales.reshape(B, S, H * W)                                               # (B, S, HW)
        size = (w * self.sizes.view(1, S, 1)).sum(1) / w.sum(1).clamp_min(1e-12)        # (B, HW)
        ys, xs = torch.meshgrid(torch.arange(H, device=w.device, dtype=w.dtype),
                                torch.arange(W, device=w.device, dtype=w.dtype), indexing="ij")  # (H, W) each
        centres = torch.stack([xs, ys], -1).view(1, H * W, 2).expand(B, -1, -1) + 0.5   # (B, HW, 2)
        return torch.cat([centres, size[..., None]], -1)                                # (B, HW, 3)

    def perturbed_keypoints(self, h_scales: Tensor, h: Tensor,
                            noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Keypoints (B, K, 3) at the expected pixel attributes under the perturbed top-K, differentiable in the
        heatmap; the expected indicator (B, K, H*W) and the pixel attributes (B, H*W, 3). Not clamped to the image
        (train_step applies keep_inside, as detect does to E_K's keypoints)."""
        c = self.cfg
        scores = self.selection_scores(h)                                               # (B, HW)
        ebar = perturbed_topk(scores, c.k, c.sigma, c.n_samples, noise)               # (B, K, HW)
        attrs = self.pixel_attributes(h_scales)                                         # (B, HW, 3)
        return torch.bmm(ebar, attrs), ebar, attrs                                      # (B, K, 3)

    # --- training --------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        H, W = batch.images.shape[-2:]
        h_scales, h = self.heat(batch.images)                                           # (B, S, H, W), (B, H, W)
        kp, ebar, attrs = self.perturbed_keypoints(h_scales, h)                         # (B, K, 3), (B, K, HW)
        kp = self.keep_inside(kp, H, W)                                                 # as E_K's keypoints are
        patches = sample_patches(batch.images, kp, self.cfg.patch_res)                  # (B, K, C, p, p)
        out = self.head(patches, kp, batch)                                             # slots score-ordered
        loss = out.loss.mean()
        self.opt_task.zero_grad(set_to_none=True)
        self.opt_heat.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_task.step()
        self.opt_heat.step()
        with torch.no_grad():                                                           # how spread each slot is
            pos = attrs[..., :2]                                                        # (B, HW, 2)
            second = torch.bmm(ebar, (pos ** 2).sum(-1, keepdim=True))[..., 0]          # (B, K) E|x|^2
            var = (second - (torch.bmm(ebar, pos) ** 2).sum(-1)).clamp_min(0)           # (B, K) E|x - E x|^2
        return {"task": loss.detach(), "slot_spread": var.sqrt().mean()}

