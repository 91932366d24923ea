"""MIST (sections 3-4, Algorithm 1): H_eta -> E_K -> S -> T_tau -> task loss, trained by lifting.

One training step on a batch of images I:
  0. h = H_eta(I) once (B, S, H, W); x0 = E_K(h) (no gradient: top-K is not differentiable)
  1. tau step:  Adam on L_task(T_tau(S(I, x0)))                       (the lambda term is constant in tau)
  2. x step:    kp_steps x SGD on the leaf x (init x0): sum_b L_task_b + lambda ||x - x0||^2
  3. eta step:  Adam on mean_b w_b ||G(x) - H_eta(I)||^2,  w_b = exp(-heat_weight_temp * L_task_b) (detached)
The heatmap forward of step 0 is reused by step 3 (one H_eta forward per batch). Keypoints are (cx, cy, size)
in pixels; the x step moves them in pixel units, at most kp_max_move pixels per step (a trust region: the
authors' SGD at lr 1e4 on a batch-mean loss moves them by a data-dependent amount; we bound it instead).
"""
from __future__ import annotations


import torch
from pydantic import Field
from torch import Tensor

from mist_core.config import StrictConfig
from mist_core.heatmap import HeatmapNet
from mist_core.keypoints import extract_topk, gaussian_blur, render_heatmap
from mist_core.method import LogUniform, Method, SearchSpace, Uniform
from mist_core.optim import adam
from mist_core.presets import network_preset
from mist_core.sampler import keypoint_boxes, sample_patches
from mist_core.task import TaskHead, TaskOutput, instance_mask
from mist_core.types import Batch, DataSpec, Prediction, Task

__all__ = ["MIST", "MISTConfig"]


class MISTConfig(StrictConfig):
    k: int = Field(9, ge=1, description="patches (keypoints) per image")
    sizes: tuple[float, ...] = Field((20.0,), min_length=1,
                                     description="patch side (pixels) of each discrete scale, increasing")
    patch_res: int = Field(32, ge=4, description="patches are resampled to patch_res x patch_res pixels")
    heat_width: int = Field(32, ge=1, description="channels of the heatmap network H_eta")
    heat_blocks: int = Field(4, ge=0, description="ResNet blocks of the heatmap network")
    softmax_window: int = Field(15, ge=1, description="local spatial softmax extent, pixels (odd)")
    softmax_strength: float = Field(10.0, gt=0, description="sharpness of the local spatial softmax")
    nms_window: int = Field(5, ge=1, description="E_K's non-maximum suppression window, pixels (odd)")
    task_width: int = Field(16, ge=1, description="base channels of the task network T_tau (doubled at each level)")
    task_levels: int = Field(5, ge=1, description="levels of the task network (each halves the patch)")
    task_blocks: int = Field(3, ge=0, description="ResNet blocks per task-network level")
    lr_task: float = Field(1e-4, gt=0, description="Adam learning rate of the task network (tau step)")
    lr_heat: float = Field(1e-4, gt=0, description="Adam learning rate of the heatmap network (eta step)")
    kp_lr: float = Field(1e4, ge=0, description="SGD step on the per-image loss in the keypoint (x) step, pixel units")
    kp_steps: int = Field(2, ge=0, description="keypoint (x) steps per training step")
    kp_max_move: float = Field(2.0, gt=0, description="pixels a keypoint moves per keypoint step, at most")
    kp_accept: bool = Field(True, description="undo keypoint steps that raise an image's loss")
    lam: float = Field(1e-5, ge=0, description="lambda of eq. 6: the cost of moving keypoints, per squared pixel")
    heat_weight_temp: float = Field(5.0, ge=0, description="heatmap loss weight per image w_b = exp(-temp * L_task_b)")
    heat_sigma: float = Field(0.0, ge=0, description="G's target blurred by a Gaussian of this std, pixels (0: none)")


# lambda: the task loss is a per-pixel mean (recon: ~0.04 per image early on); a 3 px move of 9 keypoints' 3 coordinates
# costs 27 * 9 * lambda: at 1e-3 (0.24) kp_accept refused every step (0 px in 100 quick steps); at 1e-5 they lower it.


def _preset_fields(scale: str) -> dict:
    """MIST's fields at `scale`: the shared task and heatmap networks', then its own lifting steps'."""
    p = network_preset(scale)
    return {**p.task.model_dump(), **p.heatmap.model_dump(), **p.mist.model_dump()}


class MIST(Method):
    name = "mist"
    Config = MISTConfig
    tasks = ("recon", "classify")
    cuda_graph = True

    @classmethod
    def default_config(cls, scale: str) -> MISTConfig:
        return MISTConfig(**_preset_fields(scale))

    @classmethod
    def search_space(cls) -> SearchSpace:
        return {"lr_task": LogUniform(1e-4, 3e-3), "lr_heat": LogUniform(1e-4, 3e-3), "kp_lr": LogUniform(1e3, 1e6),
                "lam": LogUniform(1e-7, 1e-3), "kp_max_move": Uniform(0.5, 6.0)}

    def __init__(self, cfg: MISTConfig | dict, spec: DataSpec, task: Task, device="cpu"):
        super().__init__(cfg, spec, task, device)
        c = self.cfg
        if list(c.sizes) != sorted(c.sizes) or len(set(c.sizes)) != len(c.sizes):
            raise ValueError(f"method.mist.sizes must be strictly increasing, got {c.sizes}")
        self.heat = HeatmapNet(spec.channels, c.heat_width, c.heat_blocks, c.sizes, c.softmax_window,
                               c.softmax_strength).to(self.device)
        self.head = TaskHead(task, spec.channels, c.patch_res, c.task_width, c.task_levels, c.task_blocks,
                             spec.n_classes, max_size=c.sizes[-1]).to(self.device)     # keep_inside bounds sizes
        self.opt_task = adam(self.head.parameters(), c.lr_task, self.device)
        self.opt_heat = adam(self.heat.parameters(), c.lr_heat, self.device)
        self.sizes = torch.tensor(c.sizes, dtype=torch.float32, device=self.device)  # (S,)

    # --- the pieces ------------------------------------------------------------------------------
    def detect(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """H_eta then E_K: per-scale heatmap (B, S, H, W) with grad, pooled (B, H, W), keypoints (B, K, 3), scores (B, K).

        Keypoints are moved inward so that each patch lies inside the image (keep_inside), as the x step keeps them.
        """
        h_scales, h = self.heat(images)
        with torch.no_grad():
            kp, scores = extract_topk(h_scales, h, self.sizes, self.cfg.k, self.cfg.nms_window)
            kp = self.keep_inside(kp, *images.shape[-2:])                               # (B, K, 3)
        return h_scales, h, kp, scores

    def run_task(self, batch: Batch, kp: Tensor) -> TaskOutput:
        patches = sample_patches(batch.images, kp, self.cfg.patch_res)                 # (B, K, C, p, p)
        return self.head(patches, kp, batch)

    def valid_mask(self, batch: Batch) -> Tensor:
        """(B, K): keypoints that stand for an instance (classification: the top `count`; recon: all K)."""
        K = self.cfg.k
        if self.task == "classify":
            return instance_mask(batch.counts, K)
        return torch.ones(len(batch), K, dtype=torch.bool, device=batch.images.device)

    def keep_inside(self, kp: Tensor, height: int, width: int) -> Tensor:
        """Clamp keypoints (B, K, 3) to the scale range and their patches to the image.

        A patch that may hang over the border can hide a poor decoding off the canvas (S^-1 drops it), and in
        early training the keypoint step then drives every patch to the edges, where the heatmap follows it.
        """
        size = kp[..., 2].clamp(self.cfg.sizes[0], self.cfg.sizes[-1])                   # (B, K)
        half = size / 2
        cx = torch.minimum(torch.maximum(kp[..., 0], half), (width - half).clamp_min(width / 2))
        cy = torch.minimum(torch.maximum(kp[..., 1], half), (height - half).clamp_min(height / 2))
        return torch.stack([cx, cy, size], dim=-1)

    # --- Algorithm 1, one stage each -----------------------------------------------------------
    def stage_task(self, batch: Batch, kp0: Tensor) -> Tensor:
        """Line 3: a step on tau. Returns the per-image task loss (B,) before the step."""
        out = self.run_task(batch, kp0)
        self.opt_task.zero_grad(set_to_none=True)
        out.loss.mean().backward()
        self.opt_task.step()
        return out.loss.detach()

    def stage_keypoints(self, batch: Batch, kp0: Tensor) -> tuple[Tensor, Tensor]:
        """Line 4: kp_steps SGD steps on the leaf x (init x0). Returns x (B, K, 3) and its task loss (B,)."""
        x, loss, _ = self.keypoint_descent(batch, kp0)
        return x, loss

    def keypoint_descent(self, batch: Batch, kp0: Tensor, keep_output: bool = False
                         ) -> tuple[Tensor, Tensor, TaskOutput | None]:
        """Line 4 (stage_keypoints) and, with keep_output, T_tau's outputs at the x it returns (detached), so that
        a later stage reuses them instead of running T_tau again there; None where that x was never scored
        (kp_accept off: the last step is not evaluated).

        Each step moves a coordinate by kp_lr * gradient, at most the image's trust radius (kp_max_move px at
        first). With kp_accept (default) the steps are monotone per image: a step that raises an image's objective
        (task loss + lambda ||x - x0||^2) is undone and that image's step size and radius are halved, so the
        heatmap is never regressed to keypoints worse than those it produced. Costs one task forward (no backward).
        """
        c = self.cfg
        B = kp0.shape[0]
        H, W = batch.images.shape[-2:]
        x = kp0.clone()
        best_x, best_obj, best_loss, best_g, best_out = x, None, None, None, None
        rate = torch.full((B, 1, 1), float(c.kp_lr), device=kp0.device)                 # per-image step size...
        radius = torch.full((B, 1, 1), float(c.kp_max_move), device=kp0.device)         # ...and trust radius (px)
        n_forward = c.kp_steps + (1 if c.kp_accept and c.kp_steps > 0 else 0)
        for i in range(max(n_forward, 1)):
            last = i == c.kp_steps
            x.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                out = self.run_task(batch, x)
                obj = out.loss + c.lam * ((x - kp0) ** 2).flatten(1).sum(1)               # (B,) eq. 6 per image
            g = None if last else torch.autograd.grad(obj.sum(), [x])[0]                   # only x gets a gradient
            loss, obj, x = out.loss.detach(), obj.detach(), x.detach()
            out = out.detach() if keep_output else None
            if best_obj is None or not c.kp_accept:
                best_x, best_obj, best_loss, best_g, best_out = x, obj, loss, g, out
            else:
                better = obj < best_obj                                                      # (B,)
                b3 = better[:, None, None]
                best_x = torch.where(b3, x, best_x)
                best_obj, best_loss = torch.where(better, obj, best_obj), torch.where(better, loss, best_loss)
                if keep_output:
                    best_out = best_out.where(better, out)
                if g is not None:
                    best_g = torch.where(b3, g, best_g)
                rate, radius = torch.where(b3, rate, rate / 2), torch.where(b3, radius, radius / 2)
            if last:
                break
            with torch.no_grad():
                x = best_x - torch.maximum(torch.minimum(rate * best_g, radius), -radius)
                x = self.keep_inside(x, H, W)
        if not c.kp_accept and c.kp_steps > 0:
            return x, best_loss, None                                                        # the loss before the last step
        return best_x, best_loss, best_out

    def stage_heatmap(self, h_scales: Tensor, x: Tensor, task_loss: Tensor, valid: Tensor) -> Tensor:
        """Line 5: a step on eta regressing H_eta(I) to G(x). Returns the weighted heatmap loss (scalar)."""
        B, S, H, W = h_scales.shape
        target = gaussian_blur(render_heatmap(x, self.sizes, H, W, valid), self.cfg.heat_sigma)  # (B, S, H, W)
        w = torch.exp(-self.cfg.heat_weight_temp * task_loss)                         # (B,) detached
        loss = (w * ((h_scales - target) ** 2).flatten(1).sum(1)).mean()
        self.opt_heat.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_heat.step()
        return loss.detach()

    def keypoint_targets(self, batch: Batch, kp0: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The keypoints (B, K, 3) line 5 regresses the heatmap to, their task loss (B,), and statistics to log:
        here line 4's x step from E_K's keypoints kp0 (scores (B, K): E_K's, for variants that rank patches)."""
        x, loss = self.stage_keypoints(batch, kp0)
        return x, loss, {}

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        h_scales, _, kp0, scores = self.detect(batch.images)
        task_loss = self.stage_task(batch, kp0)
        x, kp_loss, stats = self.keypoint_targets(batch, kp0, scores)
        heat_loss = self.stage_heatmap(h_scales, x, kp_loss, self.valid_mask(batch))
        moved = (x[..., :2] - kp0[..., :2]).norm(dim=-1).mean()
        return {"task": task_loss.mean(), "task_after_kp": kp_loss.mean(), "heat": heat_loss, "kp_move": moved,
                **stats}

    # --- prediction ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Tensor, counts: Tensor | None = None) -> Prediction:
        B = images.shape[0]
        _, h, kp, scores = self.detect(images)
        patches = sample_patches(images, kp, self.cfg.patch_res)                       # (B, K, C, p, p)
        dummy = Batch(images, torch.full((B, 1), -1, dtype=torch.long, device=images.device),
                      images.new_zeros(B, 1, 4),
                      counts if counts is not None else torch.full((B,), self.cfg.k, device=images.device))
        out = self.head(patches, kp, dummy)
        return Prediction(boxes=keypoint_boxes(kp), scores=scores, recon=out.recon, class_probs=out.class_probs,
                          heatmap=h, patches=out.patches_out if out.patches_out is not None else patches,
                          extras={"keypoints": kp})
