"""The method contract (mist_core.method), checked for every registered method (mist_core.registry.BUILTIN) and
each task it supports, and for any method given by its import path:

    pytest tests/test_contract.py --method mypkg.mymethod:MyMethod [--method ...]
    MIST_BENCH_METHODS=mypkg.mymethod:MyMethod,mypkg.other:Other pytest tests/test_contract.py

A method added to the registry is picked up here with no edit. Everything runs at smoke scale on a tiny fixed
synthetic batch (4 images, 40 x 40, 1-3 textured squares with boxes and labels), single-threaded.
Convention checked here: the FIRST key of the dict `train_step` returns is the method's primary objective: on
one fixed batch it must fall for a method that learns (`Method.learns`, default True), and must not rise for one with
`learns = False`. Every assertion names the method (`name[task]`) and the field it is about.
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
STEPS, WINDOW = 30, 5   # the loss check: 30 steps on one batch, comparing the means of the first and last 5
# a method that learns must lower its loss by more than rounding drift: 1 % of the first window's mean
MIN_FALL = 0.01
RISE_TOL = 1e-6         # relative: a loss that must not rise may still wobble by rounding


def names_under_test(config: pytest.Config) -> list[str]:
    """The registered methods, then each 'module:Class' from --method and MIST_BENCH_METHODS (once each)."""
    extra = list(config.getoption("--method")) + os.environ.get("MIST_BENCH_METHODS", "").split(",")
    return method_names() + [n for n in dict.fromkeys(x.strip() for x in extra) if n and n not in BUILTIN]


def pytest_generate_tests(metafunc):
    """Tests taking `name` run once per method; with `task`, once per (method, supported task); with
    `unsupported`, once per (method, task it does not support); with `key`, once per (method, search-space key).
    A method with no such case gets no test of that kind (nothing to check, rather than a vacuous pass)."""
    if "name" not in metafunc.fixturenames:
        return
    names = names_under_test(metafunc.config)
    cases = {"task": lambda cls: cls.tasks,
             "unsupported": lambda cls: [t for t in TASKS if t not in cls.tasks],
             "key": lambda cls: list(cls.search_space())}
    second = next((arg for arg in cases if arg in metafunc.fixturenames), None)
    if second is None:
        metafunc.parametrize("name", names)
    else:
        metafunc.parametrize(f"name,{second}", [pytest.param(n, x, id=f"{n}-{x}") for n in names
                                                for x in cases[second](get_method(n))])


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


def as_floats(losses: dict, who: str) -> dict[str, float]:
    """One train_step's return value, checked: a non-empty dict of detached 0-d tensors (or Python floats), each
    finite. Returns them as floats."""
    assert isinstance(losses, dict) and losses, f"{who}: train_step returned {losses!r}, not a non-empty dict"
    kinds = {k: v for k, v in losses.items()
             if not (isinstance(v, float) or (isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad))}
    assert not kinds, f"{who}: train_step losses {sorted(kinds)} are neither detached 0-d tensors nor floats: {kinds}"
    out = {k: float(v) for k, v in losses.items()}
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    assert not bad, f"{who}: train_step losses {sorted(bad)} are not finite: {bad}"
    return out


def check_losses(losses: dict, who: str) -> None:
    as_floats(losses, who)


def check_primary_loss(who: str, learns: bool, history: list[dict[str, float]]) -> None:
    """The primary objective (the first key of train_step's dict) over repeated steps on one fixed batch: finite,
    and for a method that learns the mean of the last WINDOW steps is below that of the first WINDOW by more than
    MIN_FALL of it; for `learns = False` it rises at no step (beyond rounding). Raises AssertionError."""
    assert len(history) >= 2 * WINDOW, f"{who}: {len(history)} steps are too few to judge the loss"
    history = [as_floats(h, who) for h in history]
    key = next(iter(history[0]))
    missing = [i for i, h in enumerate(history) if key not in h]
    assert not missing, f"{who}: primary loss {key!r} is missing from train_step at steps {missing}"
    loss = [h[key] for h in history]
    if learns:
        first, last = sum(loss[:WINDOW]) / WINDOW, sum(loss[-WINDOW:]) / WINDOW
        assert first - last > MIN_FALL * abs(first), (
            f"{who}: learns, yet its primary loss {key!r} did not fall by {MIN_FALL:.0%} in {len(loss)} steps on one "
            f"batch: mean of the first {WINDOW} {first:.6g}, of the last {WINDOW} {last:.6g}")
    else:
        rises = [(i, a, b) for i, (a, b) in enumerate(zip(loss, loss[1:])) if b > a + RISE_TOL * max(1.0, abs(a))]
        assert not rises, f"{who}: learns = False, yet its primary loss {key!r} rose (step, before, after): {rises}"


def primary_loss_history(m: Method, batch: Batch) -> list[dict[str, float]]:
    m.fit_setup(batch.images)
    return [m.train_step(batch) for _ in range(STEPS)]


def assert_prediction(pred: Prediction, B: int, spec: DataSpec, task: str, who: str) -> None:
    """Shapes (Prediction.check), the task's scored field present, every tensor finite, class_probs a distribution."""
    assert isinstance(pred, Prediction), f"{who}: predict returned {type(pred).__name__}, not a Prediction"
    try:
        pred.check(B, spec, task)
    except AssertionError as e:
        raise AssertionError(f"{who}: Prediction.check(batch_size={B}, task={task!r}) failed: {e}") from e
    bad = [f for f, t in all_fields(pred).items() if t is not None and not bool(torch.isfinite(t).all())]
    assert not bad, f"{who}: prediction fields {bad} have non-finite values"
    probs = pred.class_probs
    assert task != "classify" or probs is not None, f"{who}: class_probs is None for the classify task"
    if probs is not None:   # optional outside classify (asserted just above for classify)
        sums = probs.sum(-1)                                                          # (B, K)
        assert torch.allclose(sums, torch.ones(()), atol=1e-4), f"{who}: class_probs rows sum to {sums} (want 1)"
        assert bool((probs >= 0).all()), f"{who}: class_probs has negative entries (min {float(probs.min())})"


def all_fields(pred: Prediction) -> dict[str, torch.Tensor | None]:
    return {**{f: getattr(pred, f) for f in FIELDS}, **{f"extras[{k}]": v for k, v in pred.extras.items()}}


def assert_same_prediction(a: Prediction, b: Prediction, who: str, what: str) -> None:
    """Every field, extras included, is None in both or equal in value, dtype and shape."""
    fa, fb = all_fields(a), all_fields(b)
    assert fa.keys() == fb.keys(), f"{who}: extras differ {what}: {sorted(fa)} vs {sorted(fb)}"
    for f, x in fa.items():
        y = fb[f]
        assert (x is None) == (y is None), f"{who}: {f} is None in only one prediction {what}"
        assert x is None or (x.dtype == y.dtype and torch.equal(x, y)), f"{who}: {f} differs {what}"


# --- registry and configs --------------------------------------------------------------------------------------
def test_registry_entry(name):
    cls = get_method(name)
    if name in BUILTIN:
        assert cls.name == name, f"registry key {name!r} names a class whose .name is {cls.name!r}"
    else:
        assert cls.name not in BUILTIN, f"{name}: name {cls.name!r} is already a registered method's"
    assert cls.tasks and set(cls.tasks) <= set(TASKS), f"{name}: tasks {cls.tasks!r}"


def test_unsupported_task_is_refused(name, unsupported):
    cls = get_method(name)
    with pytest.raises(ValueError, match=f"does not support task '{unsupported}'"):
        cls(cls.default_config("smoke"), SPEC, unsupported)


def test_presets(name):
    cls = get_method(name)
    for scale in SCALES:
        cfg = cls.default_config(scale)
        assert isinstance(cfg, cls.Config), f"{name}: default_config({scale!r}) is a {type(cfg).__name__}, not Config"
        assert cls.make_config(scale, {}) == cfg, f"{name}: make_config({scale!r}, {{}}) differs from default_config"
    with pytest.raises(ConfigError, match="no_such_field"):
        cls.make_config("smoke", {"no_such_field": 1})


def test_search_space_domain(name, key):
    """Each domain is well formed and both its ends are accepted by the config field it tunes."""
    cls = get_method(name)
    dom = cls.search_space()[key]
    who = f"{name}: search space {key!r}"
    assert key in cls.Config.model_fields, f"{who} is not a config field ({sorted(cls.Config.model_fields)})"
    assert isinstance(dom, (LogUniform, Uniform, IntRange, Choice)), f"{who}: unknown domain {dom!r}"
    ends = list(dom.values) if isinstance(dom, Choice) else [dom.low, dom.high]
    assert ends, f"{who}: Choice with no values"
    assert isinstance(dom, Choice) or dom.low < dom.high, f"{who}: low {dom.low} is not below high {dom.high}"
    assert not isinstance(dom, LogUniform) or dom.low > 0, f"{who}: LogUniform needs low > 0, got {dom.low}"
    for v in ends:
        got = getattr(cls.make_config("smoke", {key: v}), key)
        assert got == v, f"{who}: the config turned {v!r} into {got!r}"


def test_builds_at_every_scale(name, task):
    """Every preset builds on an 80 x 80 image (e.g. MIST's bottleneck check holds for each method's networks)."""
    for scale in SCALES:
        m = build(name, task, spec=DataSpec(1, 80, 80), scale=scale)
        assert m.task == task, f"{name}[{task}]: built at scale {scale!r} with task {m.task!r}"


# --- train, predict, checkpoint ---------------------------------------------------------------------------------
def test_train_predict_and_state_round_trip(name, task, batch, tmp_path):
    who = f"{name}[{task}]"
    m = build(name, task)
    m.fit_setup(batch.images)
    for _ in range(3):
        check_losses(m.train_step(batch), who)
    m.eval()
    pred = m.predict(batch.images, batch.counts)
    assert_prediction(pred, len(batch), SPEC, task, who)
    assert_prediction(m.predict(batch.images[:2], None), 2, SPEC, task, f"{who} without counts")  # counts optional

    torch.save(m.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    m2 = build(name, task, seed=123)                                       # different initial weights
    m2.load_state_dict(state)
    m2.eval()
    assert_same_prediction(pred, m2.predict(batch.images, batch.counts), who, "after the state round trip")

    # the optimiser state travelled too: the next training step is the same
    m.train(), m2.train()
    torch.manual_seed(7)
    l1 = as_floats(m.train_step(batch), who)
    torch.manual_seed(7)
    l2 = as_floats(m2.train_step(batch), who)
    assert l1.keys() == l2.keys(), f"{who}: train_step keys differ after the state round trip: {l1} vs {l2}"
    differ = [k for k in l1 if l1[k] != pytest.approx(l2[k], rel=1e-5, abs=1e-7)]
    assert not differ, f"{who}: losses {differ} of the step after the state round trip differ: {l1} vs {l2}"


def test_predict_is_deterministic_in_eval(name, task, batch):
    m = build(name, task).eval()
    torch.manual_seed(1)
    a = m.predict(batch.images, batch.counts)
    torch.manual_seed(2)
    b = m.predict(batch.images, batch.counts)
    assert_same_prediction(a, b, f"{name}[{task}]", "between two predictions in eval mode (other RNG states)")


def test_identically_seeded_runs_agree(name, task, batch):
    """Built, set up, trained 3 steps and asked to predict from the same torch seed, twice: every loss and every
    prediction field (extras included) is identical. The trainer seeds only torch, so nothing else may matter."""
    who = f"{name}[{task}]"
    runs = []
    for _ in range(2):
        m = build(name, task, seed=0)
        m.fit_setup(batch.images)
        losses = [as_floats(m.train_step(batch), who) for _ in range(3)]
        runs.append((losses, m.eval().predict(batch.images, batch.counts)))
    (la, pa), (lb, pb) = runs
    for i, (a, b) in enumerate(zip(la, lb)):
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        assert not differ, f"{who}: step {i} losses {differ} differ between identically seeded runs: {a} vs {b}"
    assert_same_prediction(pa, pb, who, "between two identically seeded runs")


def test_losses_fall(name, task, batch):
    """STEPS steps on one fixed batch: the primary loss (first key) falls, or does not rise for `learns = False`."""
    m = build(name, task)
    check_primary_loss(f"{name}[{task}]", type(m).learns, primary_loss_history(m, batch))


def test_trivial_loss_by_hand():
    """The mean image of one all-0 and one all-1 image is 0.5 everywhere: the loss is 0.25 on every step (a loss that
    stays constant must still be the right constant), and a batch of zeros first gives 0, then 0.25."""
    cls = get_method("trivial")
    spec = DataSpec(1, 2, 2, max_instances=1)
    pad = dict(labels=torch.full((2, 1), -1), boxes=torch.zeros(2, 1, 4), counts=torch.zeros(2, dtype=torch.long))
    both = Batch(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]), **pad)
    m = cls(cls.default_config("smoke"), spec, "recon")
    got = [float(m.train_step(both)["loss"]) for _ in range(3)]
    assert got == [0.25, 0.25, 0.25], f"trivial: loss on a 0/1 batch, 3 steps: {got}"
    m = cls(cls.default_config("smoke"), spec, "recon")
    zeros, ones = Batch(torch.zeros(2, 1, 2, 2), **pad), Batch(torch.ones(2, 1, 2, 2), **pad)
    got = [float(m.train_step(zeros)["loss"]), float(m.train_step(ones)["loss"])]
    assert got == [0.0, 0.25], f"trivial: loss on zeros then ones: {got}"


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
    got = (child.name, child.Config, child.tasks, child.learns)
    assert got == ("variant", _Cfg, ("classify",), True), f"Variant: (name, Config, tasks, learns) = {got}"
    with pytest.raises(TypeError, match=r"Variant: `name` is missing"):
        type("Variant", (parent,), {})                                    # would pass itself off as "mine"
    abstract = type("Partial", (Method,), {})                           # abstract methods left: not checked
    with pytest.raises(TypeError, match="abstract"):
        abstract(_Cfg(), SPEC, "recon")


# --- the checks above, on toy methods that break them ----------------------------------------------------------
def _toy(learns: bool, loss: list[float]) -> Method:
    """A method whose train_step returns `loss` step by step as its primary objective, then an auxiliary loss that
    always falls (which must not count: only the first key is the objective)."""
    steps = iter(range(len(loss)))

    def train_step(self, batch):
        i = next(steps)
        return {"loss": loss[i], "aux": 1.0 / (i + 1)}

    toy = _define(name="toy", Config=_Cfg, tasks=("recon",), learns=learns, train_step=train_step)
    return toy(_Cfg(), SPEC, "recon")


FALLING = [1.0 / (i + 1) for i in range(STEPS)]


@pytest.mark.parametrize("learns,loss,error", [
    (True, [0.5] * STEPS, r"toy\[recon\]: learns, yet its primary loss 'loss' did not fall"),
    (True, [0.5 - 1e-9 * i for i in range(STEPS)], "did not fall by 1%"),     # rounding drift is not learning
    (True, [0.5 - 0.0001 * i for i in range(STEPS)], "did not fall by 1%"),   # 0.5 % between the windows: too little
    (True, [-0.5] * STEPS, "did not fall"),                                   # a negative constant (an NLL) too
    (True, [float("nan")] + FALLING[1:], r"losses \['loss'\] are not finite"),
    (True, [torch.tensor(v, requires_grad=True) for v in FALLING], "neither detached 0-d tensors nor floats"),
    (False, [0.5] * 10 + [0.6] * (STEPS - 10), r"learns = False, yet its primary loss 'loss' rose .*\(9, 0.5, 0.6\)"),
], ids=["constant", "drift", "too-little", "negative-constant", "nan", "attached-tensor", "rises-without-learning"])
def test_loss_check_fails_on_broken_toy_methods(learns, loss, error, batch):
    """The check test_losses_fall runs, on toys that break it: a method that learns yet keeps its loss constant (or
    drifting by rounding, or falling by under 1 %), a non-finite loss, a rise in a method that does not learn."""
    history = primary_loss_history(_toy(learns, loss), batch)
    with pytest.raises(AssertionError, match=error):
        check_primary_loss("toy[recon]", learns, history)


@pytest.mark.parametrize("learns,loss", [
    (True, FALLING),
    (True, [0.5 - 0.001 * i for i in range(STEPS)]),                           # 5 % between the windows
    (False, [0.5] * STEPS),                                                     # constant: allowed without learning
    (False, FALLING),
], ids=["falls", "falls-5pc", "constant-without-learning", "falls-without-learning"])
def test_loss_check_passes_toy_methods_that_keep_it(learns, loss, batch):
    check_primary_loss("toy[recon]", learns, primary_loss_history(_toy(learns, loss), batch))


def test_too_short_a_history_is_refused():
    with pytest.raises(AssertionError, match="too few"):
        check_primary_loss("toy[recon]", True, [{"loss": 1.0 / (i + 1)} for i in range(2 * WINDOW - 1)])


def test_determinism_check_catches_each_field():
    """assert_same_prediction compares every field, extras included, and names the one that differs."""
    base = Prediction(boxes=torch.zeros(2, 1, 4), scores=torch.zeros(2, 1), recon=torch.zeros(2, 1, 4, 4),
                      class_probs=torch.full((2, 1, 10), 0.1), extras={"keypoints": torch.zeros(2, 1, 3)})
    assert_same_prediction(base, Prediction(**{f: getattr(base, f) for f in FIELDS}, extras=dict(base.extras)),
                           "toy", "(a copy)")
    for f in ("boxes", "scores", "recon", "class_probs"):
        other = Prediction(**{g: getattr(base, g) for g in FIELDS}, extras=dict(base.extras))
        setattr(other, f, getattr(base, f) + 1e-6)
        with pytest.raises(AssertionError, match=rf"toy: {f} differs"):
            assert_same_prediction(base, other, "toy", "")
    other = Prediction(base.boxes, base.scores, base.recon, base.class_probs, extras={"keypoints": torch.ones(2, 1, 3)})
    with pytest.raises(AssertionError, match=r"toy: extras\[keypoints\] differs"):
        assert_same_prediction(base, other, "toy", "")
    with pytest.raises(AssertionError, match="toy: heatmap is None in only one"):
        assert_same_prediction(base, Prediction(base.boxes, base.scores, base.recon, base.class_probs,
                                                heatmap=torch.zeros(2, 4, 4), extras=base.extras), "toy", "")
    with pytest.raises(AssertionError, match="toy: extras differ"):
        assert_same_prediction(base, Prediction(base.boxes, base.scores, base.recon, base.class_probs), "toy", "")


def test_extra_methods_come_from_the_option_and_the_environment(pytestconfig, monkeypatch):
    """--method and MIST_BENCH_METHODS add 'module:Class' names once each, after the registered ones; a registry
    key given again is not repeated."""
    monkeypatch.setenv("MIST_BENCH_METHODS", " pkg.b:B ,pkg.a:A,,trivial")
    monkeypatch.setattr(pytestconfig.option, "method", ["pkg.a:A", "mist"])
    assert names_under_test(pytestconfig) == method_names() + ["pkg.a:A", "pkg.b:B"], names_under_test(pytestconfig)


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
    who, got = f"{name}[{task}]", sorted(res.metrics)
    assert res.metrics.get("step") == 2.0, f"{who}: metrics step is {res.metrics.get('step')} after 2 steps: {got}"
    assert "det_rate" in res.metrics, f"{who}: det_rate missing from the metrics: {got}"
    assert ("rmse" in res.metrics) == (res.example.recon is not None), f"{who}: rmse iff recon predicted: {got}"
    assert ("cls_acc" in res.metrics) == (res.example.class_probs is not None), f"{who}: cls_acc iff class_probs: {got}"
    headline = "rmse" if task == "recon" else "cls_acc"
    assert headline in res.metrics, f"{who}: task {task!r} needs {headline!r} in the metrics: {got}"
