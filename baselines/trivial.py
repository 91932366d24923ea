"""The trivial reference: predict the mean training image, detect nothing. Every method must beat it.

It learns nothing (`learns = False`): the trainer runs one pass, after which `mean` is the training images' mean."""
from __future__ import annotations

import torch
from torch import Tensor

from mist_core.config import StrictConfig
from mist_core.method import Method
from mist_core.types import Batch, Prediction


class TrivialConfig(StrictConfig):
    pass


class Trivial(Method):
    name = "trivial"
    Config = TrivialConfig
    tasks = ("recon",)
    learns = False  # the running mean is exact after one pass over the training images

    @classmethod
    def default_config(cls, scale: str) -> TrivialConfig:
        return TrivialConfig()

    def __init__(self, cfg, spec, task, device="cpu"):
        super().__init__(cfg, spec, task, device)
        self.mean = torch.zeros(spec.channels, spec.height, spec.width, device=self.device)  # (C, H, W)
        self.n_seen = 0

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        # running mean over every training image seen
        B = len(batch)
        self.mean += (batch.images.sum(0) - B * self.mean) / (self.n_seen + B)
        self.n_seen += B
        loss = ((batch.images - self.mean) ** 2).mean()
        return {"loss": loss.detach()}

    def predict(self, images: Tensor, counts: Tensor | None = None) -> Prediction:
        B = images.shape[0]
        return Prediction(boxes=images.new_zeros(B, 0, 4), scores=images.new_zeros(B, 0),
                          recon=self.mean.expand(B, -1, -1, -1).clone())

    def extra_state(self):
        return {"mean": self.mean, "n_seen": self.n_seen}

    def load_extra_state(self, state):
        self.mean, self.n_seen = state["mean"].to(self.device), int(state["n_seen"])
