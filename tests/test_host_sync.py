"""No host read inside a training step: on a GPU each would stall the step until every queued kernel is done, and a
CUDA graph cannot capture it. Every registered method that learns (and any `--method module:Class`), for each task,
is profiled on the CPU at smoke scale; its step may call none of bench.host.SYNC_OPS (`.item()`, `float(t)`,
`bool(t)` end in aten::_local_scalar_dense; nonzero & co size their output by the data). `t.tolist()` and
`t.numpy()` read CPU memory without an aten op, so this check cannot see them; on CUDA they are device-to-host
copies, which `python -m bench --only host --device cuda` counts as sync calls."""
from __future__ import annotations

import pytest
import torch

from bench.host import SYNC_OPS, count_host
from mist_core.registry import get_method
from tests.test_contract import SPEC, _Cfg, _define, build, names_under_test, tiny_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def pytest_generate_tests(metafunc):
    """(name, task) for every method under test that learns (one with nothing to learn has no step budget)."""
    if "name" in metafunc.fixturenames:
        cases = [(n, t) for n in names_under_test(metafunc.config) if get_method(n).learns
                 for t in get_method(n).tasks]
        metafunc.parametrize("name,task", [pytest.param(n, t, id=f"{n}-{t}") for n, t in cases])


def _counts(step) -> dict:
    for _ in range(2):                        # lazy state (optimiser moments) first, as the trainer's first steps
        step()
    return count_host(step, 1, cuda=False)


def _reads(step) -> dict[str, float]:
    return _counts(step)["host_read_ops"]


def test_a_training_step_reads_nothing_to_the_host(name, task):
    """...and builds no tensor from host data (torch.tensor([...]) in a step: on CUDA a copy from host memory every
    step, which a CUDA graph cannot capture; make it a buffer once)."""
    m = build(name, task)
    batch = tiny_batch()
    m.fit_setup(batch.images)
    c = _counts(lambda: m.train_step(batch))
    assert not c["host_read_ops"], f"{name}[{task}]: its training step reads the host (op: per step): {c['host_read_ops']}"
    assert c["host_data"] == 0, f"{name}[{task}]: its training step builds {c['host_data']:g} tensors from host data"


@pytest.mark.parametrize("read", [lambda t: t.item(), lambda t: float(t), lambda t: bool(t > 0), lambda t: t[t > 0]],
                         ids=["item", "float", "bool", "mask-index"])
def test_the_check_sees_each_kind_of_read(read):
    """A toy step that reads its loss in one of the usual ways is caught, with the op named."""
    def train_step(self, batch):
        loss = batch.images.mean()
        read(loss)
        return {"loss": loss}

    toy = _define(name="toy", Config=_Cfg, tasks=("recon",), train_step=train_step)(_Cfg(), SPEC, "recon")
    batch = tiny_batch()
    reads = _reads(lambda: toy.train_step(batch))
    assert reads and set(reads) <= SYNC_OPS, reads


def test_the_check_sees_a_tensor_built_from_host_data():
    def train_step(self, batch):
        return {"loss": (batch.images - torch.tensor([0.5])).mean()}

    toy = _define(name="toy", Config=_Cfg, tasks=("recon",), train_step=train_step)(_Cfg(), SPEC, "recon")
    batch = tiny_batch()
    assert _counts(lambda: toy.train_step(batch))["host_data"] == 1


def test_a_step_that_keeps_its_loss_on_the_device_passes():
    def train_step(self, batch):
        return {"loss": (batch.images ** 2).mean()}

    toy = _define(name="toy", Config=_Cfg, tasks=("recon",), train_step=train_step)(_Cfg(), SPEC, "recon")
    batch = tiny_batch()
    assert _reads(lambda: toy.train_step(batch)) == {}
    assert torch.is_tensor(toy.train_step(batch)["loss"])
