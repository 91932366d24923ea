"""The training loop's budget and schedule: steps are the budget, seconds only a marked safety cap, and the cosine
schedule sets every optimiser's lr from the step alone."""
from __future__ import annotations

import math

import pytest

from mist_core.data import dataset_config, load_splits
from mist_core.train import RunConfig, Trainer


@pytest.fixture(scope="module")
def splits():
    return load_splits(dataset_config("mnist_hard", {"n_train": 16, "n_test": 8}), use_cache=False)


def trainer(splits, **train) -> Trainer:
    cfg = RunConfig(method="grid", dataset="mnist_hard", scale="smoke", dataset_params={"n_train": 16, "n_test": 8},
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
