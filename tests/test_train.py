"""The training loop's budget, schedule and resume: steps are the budget (one pass for a method with nothing to
learn), seconds only a marked safety cap, the cosine schedule sets every optimiser's lr from the step alone, and a
run resumed from a checkpoint trains on the batches an unbroken one would."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines.grid import Grid
from mist_core.mist import MIST
from mist_core.data import dataset_config, load_splits
from mist_core.data.container import MultiInstanceData, Splits
from mist_core.train import RunConfig, Trainer


@pytest.fixture(scope="module")
def splits():
    return load_splits(dataset_config("mnist_hard", {"n_train": 16, "n_test": 8}), use_cache=False)


def trainer(splits, method="grid", **train) -> Trainer:
    cfg = RunConfig(method=method, dataset="mnist_hard", scale="smoke", dataset_params={"n_train": 16, "n_test": 8},
                    train={"batch_size": 4, "eval_every": 100, "eval_images": 4, "threads": 1, **train})
    return Trainer(cfg, splits=splits)


def test_cosine_schedule_by_hand(splits):
    t = trainer(splits, max_steps=4, lr_decay="cosine", lr_final=0.1)
    base = {k: [g["lr"] for g in o.param_groups] for k, o in t.method.optimizers().items()}
    expect = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)]
    assert t.lr_factor() == pytest.approx(1.0)
    t.run(progress=False)
    assert expect[4] == pytest.approx(0.1) and t.lr_factor() == pytest.approx(expect[4])
    for k, o in t.method.optimizers().items():   # the last step ran at step index 3
        assert [g["lr"] for g in o.param_groups] == pytest.approx([b * expect[3] for b in base[k]])


def test_constant_schedule_leaves_lrs_alone(splits):
    t = trainer(splits, max_steps=3)
    base = {k: [g["lr"] for g in o.param_groups] for k, o in t.method.optimizers().items()}
    res = t.run(progress=False)
    assert {k: [g["lr"] for g in o.param_groups] for k, o in t.method.optimizers().items()} == base
    assert res.metrics["stopped_by_seconds"] == 0.0 and res.metrics["step"] == 3


def test_the_seconds_cap_is_marked(splits):
    res = trainer(splits, max_steps=1000, max_seconds=1e-9).run(progress=False)
    assert res.metrics["step"] == 1 and res.metrics["stopped_by_seconds"] == 1.0


def test_a_method_with_nothing_to_learn_runs_one_pass():
    # 5 images of 1 x 2 x 2: image i is [[i/10, 0], [0, 0.1]], so the mean image is [[0.2, 0], [0, 0.1]]
    x = np.zeros((5, 1, 2, 2), np.float32)
    x[:, 0, 0, 0], x[:, 0, 1, 1] = np.arange(5) / 10, 0.1
    data = MultiInstanceData(x, np.array([[[0, 0, 1, 1]]] * 5, np.float32), np.zeros((5, 1), np.int64),
                             np.ones(5, np.int64))
    cfg = RunConfig(method="trivial", dataset="mnist_hard", scale="smoke", dataset_params={"n_train": 5, "n_test": 5},
                    train={"batch_size": 2, "max_steps": 1000, "eval_every": 2, "eval_images": 5, "threads": 1})
    res = Trainer(cfg, splits=Splits(data, data)).run(progress=False)
    assert [h["step"] for h in res.history] == [2.0, 3.0]             # ceil(5 / 2) steps, the last a batch of 1
    assert res.metrics["stopped_by_seconds"] == 0.0 and res.trainer.method.n_seen == 5
    assert torch.allclose(res.trainer.method.mean, torch.tensor([[[0.2, 0.0], [0.0, 0.1]]]), atol=1e-6)


@pytest.mark.parametrize("method,steps", [("grid", 10), ("kmeans", 4), ("trivial", 4)])
def test_only_a_learner_runs_the_whole_step_budget(splits, method, steps):
    res = trainer(splits, max_steps=10, method=method).run(progress=False)   # 16 images of batch 4: 4 steps a pass
    assert res.metrics["step"] == steps and res.metrics["stopped_by_seconds"] == 0.0


def test_resume_sees_the_batches_of_an_unbroken_run(splits, tmp_path):
    """Interrupted at step 5 (mid-pass: 4 batches a pass), saved, loaded into a fresh trainer and continued to 10:
    the same batches as an unbroken run of 10, and the same parameters bit for bit."""
    def recording(t: Trainer) -> list[float]:
        seen, step = [], t.method.train_step
        t.method.train_step = lambda b: (seen.append(float(b.images.sum())), step(b))[1]
        return seen

    a = trainer(splits, max_steps=10)
    seen_a = recording(a)
    a.run(progress=False)
    b = trainer(splits, max_steps=5)
    seen_b = recording(b)
    b.run(progress=False)
    torch.save(b.state_dict(), tmp_path / "state.pt")
    c = trainer(splits, max_steps=10)
    c.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    seen_c = recording(c)
    c.run(progress=False)
    assert seen_b == seen_a[:5] and seen_c == seen_a[5:] and len(set(seen_a[:4])) == 4
    assert c.step == 10 and c.epoch == a.epoch == 3
    for k, m in a.method.modules().items():
        for (name, p), q in zip(m.state_dict().items(), c.method.modules()[k].state_dict().values()):
            assert torch.equal(p, q), f"{k}.{name} differs after the resumed run"


def test_a_checkpoint_keeps_the_cuda_generator_of_a_run_on_cuda(splits, tmp_path, monkeypatch):
    """Training on CUDA (the device's generator stood in for on the CPU), the checkpoint holds that generator's state
    and loading it restores it on the run's device, through torch.save / torch.load(weights_only=True); a CPU run's
    checkpoint holds none and leaves the CUDA generator alone."""
    gen = {"state": torch.arange(16, dtype=torch.uint8)}
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": gen["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append((state, device)))
    cpu = trainer(splits, max_steps=2)
    cpu.run(progress=False)
    assert "cuda_rng" not in cpu.state_dict()
    a = trainer(splits, max_steps=2)
    a.run(progress=False)
    a.method.device = torch.device("cuda")                   # as a run on CUDA; only the generators are asked
    torch.save(a.state_dict(), tmp_path / "state.pt")
    gen["state"] = torch.zeros(16, dtype=torch.uint8)        # the generator moves on after the checkpoint
    b = trainer(splits, max_steps=4)
    b.method.device = torch.device("cuda")
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert len(calls) == 1 and torch.equal(calls[0][0], torch.arange(16, dtype=torch.uint8))
    assert calls[0][1] == torch.device("cuda")
    c = trainer(splits, max_steps=4)                        # on the CPU: the CUDA state is not touched
    c.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert len(calls) == 1


class AutocastProbe(Grid):
    """Grid that records whether its steps run under autocast, and in which dtype."""
    name = "autocast_probe"

    def train_step(self, batch):
        self.seen = [*getattr(self, "seen", []), (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))]
        return super().train_step(batch)


def test_one_precision_policy_applied_at_start_and_recorded(splits):
    """train.precision (default full fp32) is in every run's params, sets torch's TF32 switches when the Trainer
    starts, and bf16 runs each training step under bfloat16 autocast (and only the steps)."""
    from mist_core.presets import train_config
    from mist_core.train import resolve

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())                        # restored after the test
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        assert train_config("paper").precision == "fp32"
        t = trainer(splits, max_steps=1)
        assert t.resolved.as_params()["train.precision"] == "fp32"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
        trainer(splits, max_steps=1, precision="tf32")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        res = trainer(splits, method="tests.test_train:AutocastProbe", max_steps=2, precision="bf16").run(progress=False)
        assert res.trainer.method.seen == [(True, torch.bfloat16)] * 2 and math.isfinite(res.metrics["train_task"])
        assert not torch.is_autocast_enabled("cpu")                                  # evaluation ran outside it
        with pytest.raises(Exception, match="precision"):
            resolve(RunConfig(method="grid", dataset="mnist_hard", scale="smoke", train={"precision": "fp16"}))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


def test_progress_says_something_between_evaluations(splits, monkeypatch, caplog):
    import logging

    from mist_core import train

    monkeypatch.setattr(train, "HEARTBEAT_S", 0.0)                          # every step is "20 s later"
    with caplog.at_level(logging.INFO, logger="mist_core.train"):
        trainer(splits, max_steps=3, eval_every=100).run(progress=True)
    beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [b.split(",")[0] for b in beats] == ["step 1/3", "step 2/3", "step 3/3"], beats
    assert all("steps/s, train_" in b for b in beats), beats                # the rate and the first loss, named


class NaNAtStep3(Grid):
    """Grid whose third step reports a NaN loss (as a diverging method would)."""
    name = "nan_at_step_3"

    def train_step(self, batch):
        out = super().train_step(batch)
        self.n = getattr(self, "n", 0) + 1
        return {**out, "task": out["task"] * float("nan") if self.n == 3 else out["task"]}


class NaNKeypointsAtStep3(MIST):
    """MIST whose detector gives non-finite keypoints from its third training step on (a diverged heatmap does)."""
    name = "nan_keypoints_at_step_3"

    def train_step(self, batch):
        self.n = getattr(self, "n", 0) + 1
        return super().train_step(batch)

    def detect(self, images):
        h_scales, h, kp, scores = super().detect(images)
        if torch.is_grad_enabled() and getattr(self, "n", 0) >= 3:    # a training step, not predict
            kp = kp.clone()
            kp[0, 0, 0], kp[-1, -1, 2] = float("nan"), float("inf")
        return h_scales, h, kp, scores


def test_non_finite_keypoints_reach_no_index_and_the_loss_is_named(splits):
    """A NaN or inf keypoint must not become an index (NaN.long() is INT64_MIN: an index error on the CPU, a
    device-side assert that kills the process on CUDA): the step runs, its loss is non-finite, the Trainer names it."""
    with pytest.raises(FloatingPointError, match=r"training loss task, .* is not finite .* in steps 1-4"):
        trainer(splits, method="tests.test_train:NaNKeypointsAtStep3", max_steps=10, eval_every=4).run(progress=False)


def test_a_non_finite_loss_stops_the_run_at_the_next_read_naming_it(splits):
    """Losses stay on the device between reports; the first read after a NaN names the loss and the steps."""
    with pytest.raises(FloatingPointError, match=r"training loss task is not finite \(nan\) in steps 1-4"):
        trainer(splits, method="tests.test_train:NaNAtStep3", max_steps=10, eval_every=4).run(progress=False)
    res = trainer(splits, max_steps=4, eval_every=2).run(progress=False)          # a finite run reports floats
    assert all(isinstance(h["train_task"], float) and math.isfinite(h["train_task"]) for h in res.history)
