"""The method contract, checked for every registered method (mist_core.registry.BUILTIN) and each task it supports.

A method added to the registry is picked up here with no edit. Everything runs at smoke scale on a tiny fixed
synthetic batch (4 images, 40 x 40, 1-3 textured squares with boxes and labels), single-threaded.
Convention checked here: the FIRST key of the dict `train_step` returns is the method's primary objective
(the loss that must fall on a fixed batch).
"""
from __future__ import annotations

import math

import pytest
import torch

from mist_core.config import ConfigError
from mist_core.method import SCALES, Choice, IntRange, LogUniform, Uniform
from mist_core.registry import BUILTIN, get_method, method_names
from mist_core.types import Batch, DataSpec, Prediction

SPEC = DataSpec(channels=1, height=40, width=40, n_classes=10, max_instances=3)
CASES = [pytest.param(n, t, id=f"{n}-{t}") for n in method_names() for t in get_method(n).tasks]
FIELDS = ("boxes", "scores", "recon", "class_probs", "heatmap", "patches")


def tiny_batch(B: int = 4, H: int = 40, W: int = 40, L: int = 3, side: int = 12, seed: int = 0) -> Batch:
    """B images with 1..L random textured squares each; boxes, labels and counts to match (padding rows 0/-1)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, L + 1, (B,), generator=g)
    images, boxes, labels = torch.zeros(B, 1, H, W), torch.zeros(B, L, 4), torch.full((B, L), -1)
    for b in range(B):                      # test data construction, not a training step
        for i in range(int(counts[b])):
            x0, y0 = (int(v) for v in torch.randint(0, W - side, (2,), generator=g))
            images[b, 0, y0:y0 + side, x0:x0 + side] = 0.3 + 0.7 * torch.rand(side, side, generator=g)
            boxes[b, i] = torch.tensor([x0, y0, x0 + side, y0 + side], dtype=torch.float32)
            labels[b, i] = int(torch.randint(0, 10, (1,), generator=g))
    return Batch(images, labels, boxes, counts)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batch() -> Batch:
    return tiny_batch()


def build(name: str, task: str, seed: int = 0, spec: DataSpec = SPEC, scale: str = "smoke"):
    cls = get_method(name)
    torch.manual_seed(seed)
    return cls(cls.default_config(scale), spec, task)


def assert_prediction(pred: Prediction, B: int, spec: DataSpec) -> None:
    assert isinstance(pred, Prediction)
    pred.check(B, spec)
    for f in FIELDS:
        t = getattr(pred, f)
        assert t is None or bool(torch.isfinite(t).all()), f"{f} has non-finite values"
    if pred.class_probs is not None:
        assert torch.allclose(pred.class_probs.sum(-1), torch.ones(()), atol=1e-4)
        assert (pred.class_probs >= 0).all()


# --- registry and configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", method_names())
def test_registry_entry(name):
    cls = get_method(name)
    assert cls.name == name, f"registry key {name!r} names a class whose .name is {cls.name!r}"
    assert cls.tasks and set(cls.tasks) <= {"recon", "classify"}
    for task in {"recon", "classify"} - set(cls.tasks):
        with pytest.raises(ValueError, match="does not support"):
            cls(cls.default_config("smoke"), SPEC, task)


@pytest.mark.parametrize("name", method_names())
def test_presets_and_search_space(name):
    cls = get_method(name)
    fields = set(cls.Config.model_fields)
    for scale in SCALES:
        cfg = cls.default_config(scale)
        assert isinstance(cfg, cls.Config)
        assert cls.make_config(scale, {}) == cfg
    for key, dom in cls.search_space().items():
        assert key in fields, f"search space key {key!r} is not a config field of {name}"
        assert isinstance(dom, (LogUniform, Uniform, IntRange, Choice))
    with pytest.raises(ConfigError, match="no_such_field"):
        cls.make_config("smoke", {"no_such_field": 1})


@pytest.mark.parametrize("name,task", CASES)
def test_builds_at_every_scale(name, task):
    """Every preset builds on an 80 x 80 image (e.g. MIST's bottleneck check holds for each method's networks)."""
    for scale in SCALES:
        m = build(name, task, spec=DataSpec(1, 80, 80), scale=scale)
        assert m.task == task


# --- train, predict, checkpoint ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,task", CASES)
def test_train_predict_and_state_round_trip(name, task, batch, tmp_path):
    m = build(name, task)
    m.fit_setup(batch.images)
    for _ in range(3):
        losses = m.train_step(batch)
        assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values()), losses
    m.eval()
    pred = m.predict(batch.images, batch.counts)
    assert_prediction(pred, len(batch), SPEC)
    assert_prediction(m.predict(batch.images[:2], None), 2, SPEC)         # counts are optional
    assert pred.recon is not None if task == "recon" else pred.class_probs is not None

    torch.save(m.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    m2 = build(name, task, seed=123)                                       # different initial weights
    m2.load_state_dict(state)
    m2.eval()
    pred2 = m2.predict(batch.images, batch.counts)
    for f in FIELDS:
        a, b = getattr(pred, f), getattr(pred2, f)
        assert (a is None) == (b is None), f
        assert a is None or torch.equal(a, b), f"{f} differs after the state round trip"

    # the optimiser state travelled too: the next training step is the same
    m.train(), m2.train()
    torch.manual_seed(7)
    l1 = m.train_step(batch)
    torch.manual_seed(7)
    l2 = m2.train_step(batch)
    assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name,task", CASES)
def test_predict_is_deterministic_in_eval(name, task, batch):
    m = build(name, task).eval()
    torch.manual_seed(1)
    a = m.predict(batch.images, batch.counts)
    torch.manual_seed(2)
    b = m.predict(batch.images, batch.counts)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)


@pytest.mark.parametrize("name,task", CASES)
def test_losses_fall(name, task, batch):
    """30 steps on one fixed batch: the primary loss (first key) falls (mean of the last 5 < mean of the first 5).

    A method without trainable parameters (e.g. a running mean) only has to not get worse.
    """
    m = build(name, task)
    m.fit_setup(batch.images)
    hist = [m.train_step(batch) for _ in range(30)]
    key = next(iter(hist[0]))
    first = sum(h[key] for h in hist[:5]) / 5
    last = sum(h[key] for h in hist[-5:]) / 5
    if m.n_parameters() == 0:
        assert last <= first + 1e-6, (key, first, last)
    else:
        assert last < first, (key, first, last)


# --- inside the shared training loop and metrics -------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_splits():
    data = pytest.importorskip("mist_core.data")
    try:
        return data.load_splits(data.dataset_config("mnist_hard", {"n_train": 16, "n_test": 8}))
    except data.DataError as e:  # pragma: no cover - no digits available on this machine
        pytest.skip(f"mnist_hard smoke data unavailable: {e}")


@pytest.mark.parametrize("name,task", CASES)
def test_runs_in_the_trainer(name, task, smoke_splits):
    """Two steps and an evaluation through Trainer: the shared metrics accept the method's predictions."""
    from mist_core.train import RunConfig, Trainer

    cfg = RunConfig(method=name, dataset="mnist_hard", task=task, scale="smoke",
                    dataset_params={"n_train": 16, "n_test": 8},
                    train={"batch_size": 4, "max_steps": 2, "eval_every": 1, "eval_images": 4, "threads": 1})
    try:
        res = Trainer(cfg, splits=smoke_splits).run(progress=False)
    finally:
        torch.set_flush_denormal(False)  # the Trainer flushes denormals process-wide; hypothesis tests refuse that
    assert res.metrics["step"] == 2.0 and "det_rate" in res.metrics
    assert ("rmse" in res.metrics) == (res.example.recon is not None)
    assert "rmse" in res.metrics if task == "recon" else "cls_acc" in res.metrics
    assert ("cls_acc" in res.metrics) == (res.example.class_probs is not None)
