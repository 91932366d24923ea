"""A MIST step runs T_tau once per (keypoints, weights): MIST-reach's relocation reuses the x step's outputs at the
keypoints it returns (and a round's at the keypoints it keeps) instead of running the task network there again,
with the same numbers as running it again."""
from __future__ import annotations

import pytest
import torch

from baselines.mist_reach import MISTReach
from mist_core.mist import MIST
from mist_core.task import TaskOutput
from test_contract import SPEC, tiny_batch

pytestmark = pytest.mark.usefixtures("one_thread")


class _Rerun(MISTReach):
    """The relocation as it was: T_tau runs again on the keypoints each round starts from."""
    name = "mist_reach_rerun"

    def relocate(self, batch, x, scores, out: TaskOutput | None = None):
        return super().relocate(batch, x, scores, None)


def _pair(task: str, params: dict) -> tuple[MISTReach, MISTReach]:
    cfg = MISTReach.make_config("smoke", params)
    torch.manual_seed(0)
    new = MISTReach(cfg, SPEC, task)
    torch.manual_seed(0)
    old = _Rerun(cfg, SPEC, task)
    return new, old


@pytest.mark.parametrize("task", ["recon", "classify"])
@pytest.mark.parametrize("params", [{}, {"relocations": 2, "centre_steps": 0}, {"kp_accept": False}],
                         ids=["default", "two-rounds", "no-accept"])
def test_reused_outputs_train_as_a_rerun_does(task, params):
    new, old = _pair(task, params)
    moved = 0.0
    for step in range(3):
        batch = tiny_batch(seed=step)
        _, _, kp0, scores = new.detect(batch.images)
        x_new, loss_new, _ = new.keypoint_targets(batch, kp0, scores)
        x_old, loss_old, _ = old.keypoint_targets(batch, kp0, scores)
        assert torch.equal(x_new, x_old) and torch.equal(loss_new, loss_old), f"step {step}: keypoint targets differ"
        a, b = new.train_step(batch), old.train_step(batch)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (step, a, b)
        moved += float(a["relocated"]) if "relocated" in a else 0.0
    for (k, p), q in zip(new.state_dict().items(), old.state_dict().values()):
        assert not isinstance(p, torch.Tensor) or torch.equal(p, q), k
    if params.get("relocations", 1):
        assert moved > 0, "no relocation was accepted: the reuse was never exercised"


@pytest.mark.parametrize("cls", [MIST, MISTReach], ids=["mist", "mist_reach"])
@pytest.mark.parametrize("task", ["recon", "classify"])
def test_no_forward_on_keypoints_already_scored(cls, task, monkeypatch):
    """Within one step, T_tau never runs again on keypoints it has scored with the same weights: a call is a repeat
    when each image's keypoints are those of an earlier call (the x step's best keypoints mix its steps per image)."""
    torch.manual_seed(0)
    m = cls(cls.default_config("smoke"), SPEC, task)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    run_task = m.run_task

    def recording(batch, kp):
        weights = torch.cat([p.detach().flatten() for p in m.head.parameters()]).clone()
        calls.append((kp.detach().clone(), weights))
        return run_task(batch, kp)
    monkeypatch.setattr(m, "run_task", recording)
    batch = tiny_batch()
    for _ in range(2):
        calls.clear()
        m.train_step(batch)
        repeats = []
        for j, (kp, weights) in enumerate(calls):
            seen = torch.zeros(kp.shape[0], dtype=torch.bool)                        # (B,) image scored before
            for earlier, w in calls[:j]:
                if torch.equal(w, weights):
                    seen |= (earlier == kp).flatten(1).all(1)
            if seen.all():
                repeats.append(j)
        assert not repeats, f"{cls.name}[{task}]: T_tau ran again on keypoints already scored, call(s) {repeats}"
    assert len(calls) >= 2 + m.cfg.kp_steps
