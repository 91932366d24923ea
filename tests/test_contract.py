"""The method contract (mist_core.method), checked for every registered method (mist_core.registry.BUILTIN) and
each task it supports, and for any method given by its import path:

    pytest tests/test_contract.py --method mypkg.mymethod:MyMethod [--method ...]
    MIST_BENCH_METHODS=mypkg.mymethod:MyMethod,mypkg.other:Other pytest tests/test_contract.py

A method added to the registry is picked up here with no edit. Everything runs at smoke scale on a tiny fixed
synthetic batch (4 images, 40 x 40, 1-3 textured squares with boxes and labels), single-threaded.
Convention checked here: the FIRST key of the dict `train_step` returns is the method's primary objective
(the loss that must fall on a fixed batch).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from mist_core.config import ConfigError, StrictConfig
from mist_core.method import SCALES, TASKS, Choice, IntRange, LogUniform, Method, Uniform
from mist_core.registry import BUILTIN, get_method, method_names
from mist_core.types import Batch, DataSpec, Prediction

SPEC = DataSpec(channels=1, height=40, width=40, n_classes=10, max_instances=3)
FIELDS = ("boxes", "scores", "recon", "class_probs", "heatmap", "patches")


def names_under_test(config: pytest.Config) -> list[str]:
    """The registered methods, then each 'module:Class' from --method and MIST_BENCH_METHODS (once each)."""
    extra = list(config.getoption("--method")) + os.environ.get("MIST_BENCH_METHODS", "").split(",")
    return method_names() + [n for n in dict.fromkeys(x.strip() for x in extra) if n and n not in BUILTIN]


def pytest_generate_tests(metafunc):
    """Tests taking `name` run once per method; tests taking `name` and `task`, once per (method, task)."""
    names = names_under_test(metafunc.config)
    if "task" in metafunc.fixturenames:
        metafunc.parametrize("name,task", [pytest.param(n, t, id=f"{n}-{t}") for n in names
                                           for t in get_method(n).tasks])
    elif "name" in metafunc.fixturenames:
        metafunc.parametrize("name", names)


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


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch() -> Batch:
    return tiny_batch()


def build(name: str, task: str, seed: int = 0, spec: DataSpec = SPEC, scale: str = "smoke"):
    cls = get_method(name)
    torch.manual_seed(seed)
    return cls(cls.default_config(scale), spec, task)


def assert_prediction(pred: Prediction, B: int, spec: DataSpec, task: str) -> None:
    assert isinstance(pred, Prediction), f"predict returned {type(pred).__name__}, not a Prediction"
    pred.check(B, spec, task)
    for f in FIELDS:
        t = getattr(pred, f)
        assert t is None or bool(torch.isfinite(t).all()), f"{f} has non-finite values"
    if pred.class_probs is not None:
        sums = pred.class_probs.sum(-1)
        assert torch.allclose(sums, torch.ones(()), atol=1e-4), f"class_probs rows sum to {sums} (want 1)"
        assert (pred.class_probs >= 0).all(), "class_probs has negative entries"


def all_fields(pred: Prediction) -> dict[str, torch.Tensor | None]:
    return {**{f: getattr(pred, f) for f in FIELDS}, **{f"extras[{k}]": v for k, v in pred.extras.items()}}


def assert_same_prediction(a: Prediction, b: Prediction, what: str) -> None:
    fa, fb = all_fields(a), all_fields(b)
    assert fa.keys() == fb.keys(), f"extras differ {what}: {sorted(fa)} vs {sorted(fb)}"
    for f, x in fa.items():
        y = fb[f]
        assert (x is None) == (y is None), f"{f} is None in only one prediction {what}"
        assert x is None or torch.equal(x, y), f"{f} differs {what}"


# --- registry and configs --------------------------------------------------------------------------------------
def test_registry_entry(name):
    cls = get_method(name)
    if name in BUILTIN:
        assert cls.name == name, f"registry key {name!r} names a class whose .name is {cls.name!r}"
    else:
        assert cls.name not in BUILTIN, f"{name}: name {cls.name!r} is already a registered method's"
    assert cls.tasks and set(cls.tasks) <= set(TASKS), f"{name}: tasks {cls.tasks!r}"
    for task in set(TASKS) - set(cls.tasks):
        with pytest.raises(ValueError, match="does not support"):
            cls(cls.default_config("smoke"), SPEC, task)


def test_presets_and_search_space(name):
    cls = get_method(name)
    fields = set(cls.Config.model_fields)
    for scale in SCALES:
        cfg = cls.default_config(scale)
        assert isinstance(cfg, cls.Config), f"default_config({scale!r}) is a {type(cfg).__name__}, not {name}'s Config"
        assert cls.make_config(scale, {}) == cfg, f"make_config({scale!r}) differs from default_config"
    for key, dom in cls.search_space().items():
        assert key in fields, f"search space key {key!r} is not a config field of {name}"
        assert isinstance(dom, (LogUniform, Uniform, IntRange, Choice)), f"search space {key!r}: {dom!r}"
    with pytest.raises(ConfigError, match="no_such_field"):
        cls.make_config("smoke", {"no_such_field": 1})


def test_builds_at_every_scale(name, task):
    """Every preset builds on an 80 x 80 image (e.g. MIST's bottleneck check holds for each method's networks)."""
    for scale in SCALES:
        m = build(name, task, spec=DataSpec(1, 80, 80), scale=scale)
        assert m.task == task


# --- train, predict, checkpoint ---------------------------------------------------------------------------------
def test_train_predict_and_state_round_trip(name, task, batch, tmp_path):
    m = build(name, task)
    m.fit_setup(batch.images)
    for _ in range(3):
        losses = m.train_step(batch)
        assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values()), losses
    m.eval()
    pred = m.predict(batch.images, batch.counts)
    assert_prediction(pred, len(batch), SPEC, task)                         # recon / class_probs per task
    assert_prediction(m.predict(batch.images[:2], None), 2, SPEC, task)   # counts are optional

    torch.save(m.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    m2 = build(name, task, seed=123)                                       # different initial weights
    m2.load_state_dict(state)
    m2.eval()
    assert_same_prediction(pred, m2.predict(batch.images, batch.counts), "after the state round trip")

    # the optimiser state travelled too: the next training step is the same
    m.train(), m2.train()
    torch.manual_seed(7)
    l1 = m.train_step(batch)
    torch.manual_seed(7)
    l2 = m2.train_step(batch)
    assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-7), "the step after the state round trip differs"


def test_predict_is_deterministic_in_eval(name, task, batch):
    m = build(name, task).eval()
    torch.manual_seed(1)
    a = m.predict(batch.images, batch.counts)
    torch.manual_seed(2)
    b = m.predict(batch.images, batch.counts)
    assert_same_prediction(a, b, "between two predictions in eval mode (other RNG states)")


def test_losses_fall(name, task, batch):
    """30 steps on one fixed batch: the primary loss (first key) is finite and falls (mean of the last 5 < mean of
    the first 5). A method without trainable parameters (e.g. a running mean) must not rise at any step instead."""
    m = build(name, task)
    m.fit_setup(batch.images)
    hist = [m.train_step(batch) for _ in range(30)]
    key = next(iter(hist[0]))
    loss = [h[key] for h in hist]
    assert all(math.isfinite(v) for v in loss), f"primary loss {key!r} is not finite: {loss}"
    if m.n_parameters() == 0:
        rises = [(i, a, b) for i, (a, b) in enumerate(zip(loss, loss[1:])) if b > a + 1e-6 * max(1.0, abs(a))]
        assert not rises, f"{name}: parameter-free, yet its primary loss {key!r} rose (step, before, after): {rises}"
    else:
        first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
        assert last < first, f"{name}: primary loss {key!r} did not fall in 30 steps: first 5 {first}, last 5 {last}"


def test_trivial_loss_by_hand():
    """The mean image of one all-0 and one all-1 image is 0.5 everywhere: the loss is 0.25 on every step (a loss that
    stays constant must still be the right constant), and a batch of zeros first gives 0, then 0.25."""
    cls = get_method("trivial")
    spec = DataSpec(1, 2, 2, max_instances=1)
    pad = dict(labels=torch.full((2, 1), -1), boxes=torch.zeros(2, 1, 4), counts=torch.zeros(2, dtype=torch.long))
    both = Batch(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]), **pad)
    m = cls(cls.default_config("smoke"), spec, "recon")
    assert [m.train_step(both)["loss"] for _ in range(3)] == [0.25, 0.25, 0.25]
    m = cls(cls.default_config("smoke"), spec, "recon")
    zeros, ones = Batch(torch.zeros(2, 1, 2, 2), **pad), Batch(torch.ones(2, 1, 2, 2), **pad)
    assert [m.train_step(zeros)["loss"], m.train_step(ones)["loss"]] == [0.0, 0.25]


def test_prediction_check_requires_the_tasks_field():
    empty = Prediction(boxes=torch.zeros(2, 0, 4), scores=torch.zeros(2, 0))
    empty.check(2, SPEC)                                                    # no task: shapes only
    with pytest.raises(AssertionError, match="task 'recon' is scored on `recon`"):
        empty.check(2, SPEC, "recon")
    with pytest.raises(AssertionError, match="task 'classify' is scored on `class_probs`"):
        empty.check(2, SPEC, "classify")
    Prediction(empty.boxes, empty.scores, class_probs=torch.zeros(2, 0, 10)).check(2, SPEC, "classify")


# --- the class-level checks of mist_core.method.Method -----------------------------------------------------------
class _Cfg(StrictConfig):
    pass


def _define(**attrs) -> type:
    """A concrete Method subclass named `MyMethod` with `attrs` on top of a minimal body."""
    body = {"default_config": classmethod(lambda cls, scale: _Cfg()), "train_step": lambda self, batch: {"loss": 0.0},
            "predict": lambda self, images, counts=None: None, **attrs}
    return type("MyMethod", (Method,), body)


def test_a_method_missing_tasks_fails_at_class_creation():
    with pytest.raises(TypeError, match=r"MyMethod: `tasks` is missing"):
        _define(name="mine", Config=_Cfg)


@pytest.mark.parametrize("attrs,message", [
    (dict(Config=_Cfg, tasks=("recon",)), r"MyMethod: `name` is missing"),
    (dict(name="mine", tasks=("recon",)), r"MyMethod: `Config` is missing"),
    (dict(name="mine", Config=dict, tasks=("recon",)), r"MyMethod: `Config` must be .*StrictConfig"),
    (dict(name="mine", Config=_Cfg, tasks="recon"), r"MyMethod: `tasks` must be .*got 'recon'"),
    (dict(name="mine", Config=_Cfg, tasks=()), r"MyMethod: `tasks` must be"),
    (dict(name="mine", Config=_Cfg, tasks=("recon", "segment")), r"MyMethod: `tasks` must be"),
    (dict(name="mine", Config=_Cfg, tasks=("recon",), learns=0), r"MyMethod: `learns` must be a bool.*got 0"),
])
def test_method_class_checks(attrs, message):
    with pytest.raises(TypeError, match=message):
        _define(**attrs)


def test_method_class_checks_allow_inheritance_and_abstract_bases():
    parent = _define(name="mine", Config=_Cfg, tasks=("classify",))
    child = type("Variant", (parent,), {"name": "variant"})              # Config and tasks inherited
    assert (child.name, child.Config, child.tasks, child.learns) == ("variant", _Cfg, ("classify",), True)
    with pytest.raises(TypeError, match=r"Variant: `name` is missing"):
        type("Variant", (parent,), {})                                    # would pass itself off as "mine"
    abstract = type("Partial", (Method,), {})                           # abstract methods left: not checked
    with pytest.raises(TypeError, match="abstract"):
        abstract(_Cfg(), SPEC, "recon")


# --- inside the shared training loop and metrics -------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_splits():
    data = pytest.importorskip("mist_core.data")
    try:
        return data.load_splits(data.dataset_config("mnist_hard", {"n_train": 16, "n_test": 8}))
    except data.DataError as e:  # pragma: no cover - no digits available on this machine
        pytest.skip(f"mnist_hard smoke data unavailable: {e}")


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
    got = sorted(res.metrics)
    assert res.metrics["step"] == 2.0 and "det_rate" in res.metrics, got
    assert ("rmse" in res.metrics) == (res.example.recon is not None), f"rmse reported iff recon predicted: {got}"
    assert ("cls_acc" in res.metrics) == (res.example.class_probs is not None), f"cls_acc iff class_probs: {got}"
    headline = "rmse" if task == "recon" else "cls_acc"
    assert headline in res.metrics, f"task {task!r} needs {headline!r} in the metrics: {got}"
