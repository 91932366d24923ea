"""mist_core.optim.FlatAdam: torch.optim.Adam's update over one flat buffer, without host reads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mist_core.optim import ALIGN, FlatAdam, adam, get_lrs, load_optimizer_state, set_lrs

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(1, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    return net.to(memory_format=torch.channels_last)          # 4-d weights channels-last, as the task networks


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, lrs: list[float] | None = None) -> list[float]:
    g = torch.Generator().manual_seed(1)
    losses = []
    for i in range(steps):
        if lrs:
            set_lrs(opt, [lrs[i]])
        x = torch.randn(5, 2, 8, 8, generator=g)
        opt.zero_grad(set_to_none=True)
        loss = net(x).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_the_update_is_torch_adams():
    """Same init, data and learning-rate schedule: every step's loss and the final parameters agree with
    torch.optim.Adam to float rounding, and the parameters keep their shapes and channels-last strides."""
    a, b = _net(), _net()
    strides = [p.stride() for p in b.parameters()]
    lrs = [1e-2 * (1 - i / 20) for i in range(12)]
    ref = _train(a, torch.optim.Adam(a.parameters(), lr=1e-2), 12, lrs)
    got = _train(b, FlatAdam(b.parameters(), lr=1e-2), 12, lrs)
    assert got == pytest.approx(ref, rel=1e-4)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert [p.stride() for p in b.parameters()] == strides


def _odd_net(seed: int = 0) -> nn.Module:
    """Parameters of odd sizes first (GroupNorm(1, 1)'s two floats, as MIST's heatmap net): packed back to back,
    every later weight would start off any 16-byte boundary."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.GroupNorm(1, 1), nn.Conv2d(1, 3, 3), nn.GroupNorm(1, 3), nn.Conv2d(3, 5, 3),
                         nn.Flatten(), nn.Linear(5 * 4 * 4, 7)).to(memory_format=torch.channels_last)


def test_every_offset_is_aligned_and_the_update_is_still_torch_adams():
    a, b = _odd_net(), _odd_net()
    opt = FlatAdam(b.parameters(), lr=1e-2)
    offsets = [p.storage_offset() - opt.flat.storage_offset() for p in b.parameters()]
    assert all(off % ALIGN == 0 for off in offsets) and ALIGN == 64, offsets
    assert offsets == opt.offsets and len(set(offsets)) == len(offsets)
    assert all(p.grad.storage_offset() - opt.flat_grad.storage_offset() == off for p, off in zip(b.parameters(), offsets))
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    def steps(net, o):
        out = []
        for _ in range(4):
            o.zero_grad(set_to_none=True)
            loss = net(x).square().mean()
            loss.backward()
            o.step()
            out.append(float(loss.detach()))
        return out

    assert steps(b, opt) == pytest.approx(steps(a, torch.optim.Adam(a.parameters(), lr=1e-2)), rel=1e-4)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    gaps = torch.ones_like(opt.flat, dtype=torch.bool)
    for off, size in zip(opt.offsets, opt.sizes):
        gaps[off:off + size] = False
    assert gaps.any() and not opt.flat[gaps].any() and not opt.exp_avg[gaps].any()   # the padding stays 0


def test_a_checkpoint_of_the_packed_layout_loads():
    """A FlatAdam checkpoint written before offsets were aligned (moments packed back to back) still loads."""
    net = _odd_net()
    opt = FlatAdam(net.parameters(), lr=1e-2)
    _train_odd = [torch.randn(2, 1, 8, 8) for _ in range(2)]
    for x in _train_odd:
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    state = opt.state_dict()
    packed = {k: torch.cat([state["flat_adam"][k][o:o + n] for o, n in zip(opt.offsets, opt.sizes)])
              for k in ("exp_avg", "exp_avg_sq")}
    old = {"flat_adam": {"steps": state["flat_adam"]["steps"], **packed}, "param_groups": state["param_groups"]}
    opt2 = FlatAdam(_odd_net(seed=3).parameters(), lr=1e-2)
    opt2.load_state_dict(old)
    assert torch.equal(opt2.exp_avg, opt.exp_avg) and torch.equal(opt2.exp_avg_sq, opt.exp_avg_sq)
    with pytest.raises(ValueError, match="optimiser state of 5 numbers"):
        opt2.load_state_dict({**old, "flat_adam": {**old["flat_adam"], "exp_avg": torch.zeros(5)}})


def test_no_host_read_and_the_same_few_ops_for_any_number_of_parameters():
    from bench.host import count_host

    counts = []
    for net in (_net(), nn.Sequential(*[nn.Linear(3, 3) for _ in range(20)])):     # 6 and 40 parameters
        opt = FlatAdam(net.parameters(), lr=1e-3)
        counts.append(count_host(opt.step, 3, cuda=False))
    assert counts[0]["host_reads"] == counts[1]["host_reads"] == 0, counts
    assert counts[0]["aten_ops"] == counts[1]["aten_ops"], counts


def test_parameters_are_views_of_one_buffer_and_survive_a_state_dict_round_trip(tmp_path):
    net = _net()
    opt = adam(net.parameters(), 1e-2, "cpu")
    assert all(p.untyped_storage().data_ptr() == opt.flat.untyped_storage().data_ptr() for p in net.parameters())
    _train(net, opt, 3)
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    net2 = _net(seed=5)
    opt2 = adam(net2.parameters(), 1e-2, "cpu")
    net2.load_state_dict(state["net"])
    load_optimizer_state(opt2, state["opt"])
    assert _train(net2, opt2, 2) == _train(net, opt, 2)        # the same next steps: moments and counter travelled


def test_a_checkpoint_of_torch_adam_loads():
    a, b = _net(), _net()
    ta = torch.optim.Adam(a.parameters(), lr=1e-2)
    _train(a, ta, 3)
    b.load_state_dict(a.state_dict())
    fb = FlatAdam(b.parameters(), lr=1e-2)
    fb.load_state_dict(ta.state_dict())
    assert float(fb.steps) == 3
    assert _train(b, fb, 2) == pytest.approx(_train(a, ta, 2), rel=1e-4)


def test_a_replaced_gradient_is_an_error_not_a_silent_no_op():
    net = _net()
    opt = FlatAdam(net.parameters(), lr=1e-2)
    next(net.parameters()).grad = None
    with pytest.raises(RuntimeError, match=r"gradients of parameters \[0\] were replaced"):
        opt.step()


def test_learning_rates_keep_their_kind():
    net = _net()
    opt = FlatAdam(net.parameters(), lr=torch.tensor(0.5))    # as on CUDA: a tensor a captured step reads
    lr = opt.param_groups[0]["lr"]
    set_lrs(opt, [0.25])
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.25 and get_lrs(opt) == [0.25]
    other = FlatAdam(_net().parameters(), lr=0.1)             # a checkpoint with a float learning rate
    load_optimizer_state(opt, other.state_dict())
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.1)
