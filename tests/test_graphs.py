"""mist_core.graphs.StepRunner when a CUDA graph capture or replay fails, on the CPU: torch.cuda's stream, graph and
capture calls are replaced by stand-ins that behave as torch's do (torch.cuda.graph's __exit__ calls capture_end,
which raises its own error, with the failing op's error as __context__, before it leaves the capture stream)."""
from __future__ import annotations

import pytest
import torch

from mist_core.graphs import CaptureFailed, StepRunner
from mist_core.types import Batch

OP_ERROR = "CUDA error: operation not permitted when stream is capturing (aten::nonzero)"
END_ERROR = "CUDA error: operation failed due to a previous error during capture"


class FakeCuda:
    """The torch.cuda calls graphs.py makes, on a model of one thread's current stream and capture state."""

    def __init__(self):
        self.default = object()
        self.current = self.default
        self.capturing = False
        self.graphs: list[FakeCuda.Graph] = []
        self.replay_error: str | None = None
        cuda = self

        class Graph:
            def __init__(self):
                self.invalid = self.was_reset = False
                self.replays = 0
                cuda.graphs.append(self)

            def capture_begin(self, *a, **k):
                cuda.capturing = True

            def capture_end(self):
                cuda.capturing = False
                if self.invalid:
                    raise RuntimeError(END_ERROR)

            def replay(self):
                if cuda.replay_error:
                    raise RuntimeError(cuda.replay_error)
                self.replays += 1

            def reset(self):
                self.was_reset = True

        class StreamCtx:
            def __init__(self, s):
                self.s = s

            def __enter__(self):
                self.prev, cuda.current = cuda.current, self.s

            def __exit__(self, *exc):
                cuda.current = self.prev

        class GraphCtx:              # torch.cuda.graph, as torch writes it
            def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
                self.cuda_graph, self.stream_ctx = cuda_graph, StreamCtx(object())

            def __enter__(self):
                self.stream_ctx.__enter__()
                self.cuda_graph.capture_begin()

            def __exit__(self, exc_type, exc, tb):
                if exc_type is not None:
                    self.cuda_graph.invalid = True        # the op's error invalidated the capture
                self.cuda_graph.capture_end()             # raises: the stream context below is never exited
                self.stream_ctx.__exit__(exc_type, exc, tb)

        self.Graph, self.StreamCtx, self.GraphCtx = Graph, StreamCtx, GraphCtx

    def install(self, mp: pytest.MonkeyPatch) -> None:
        c = torch.cuda
        mp.setattr(c, "CUDAGraph", self.Graph)
        mp.setattr(c, "graph", self.GraphCtx)
        mp.setattr(c, "stream", self.StreamCtx)
        mp.setattr(c, "current_stream", lambda device=None: self.current)
        mp.setattr(c, "set_stream", lambda s: setattr(self, "current", s))
        mp.setattr(c, "is_current_stream_capturing", lambda: self.capturing)
        mp.setattr(c, "synchronize", lambda device=None: None)
        mp.setattr(c, "empty_cache", lambda: None)


class Step:
    """A method as StepRunner sees it, on a 'cuda' device, whose step fails while captured (as an op that reads the
    host does) when `fail_in_capture`."""

    name = "fake"
    cuda_graph = True

    def __init__(self, cuda: FakeCuda, noise: bool, fail_in_capture: bool = True):
        self.cuda, self.step_draws_noise, self.fail = cuda, noise, fail_in_capture
        self.device = torch.device("cuda")
        self.calls = 0

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.cuda.capturing and self.fail:
            raise RuntimeError(OP_ERROR)
        self.calls += 1
        return {"loss": batch.images.sum()}


def _batch() -> Batch:
    return Batch(torch.ones(2, 1, 4, 4), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, 4),
                 torch.ones(2, dtype=torch.long))


def test_a_failed_capture_names_the_op_leaves_the_capture_stream_frees_the_graph_and_runs_eagerly(monkeypatch):
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    lines: list[str] = []
    m = Step(cuda, noise=False)
    runner = StepRunner(m, graphs=True, warmup=0, log=lines.append)
    out = runner(_batch())
    assert float(out["loss"]) == 32.0 and m.calls == 1 and not runner.captured       # the step ran, eagerly
    assert runner.reason == f"CUDA graph capture failed at RuntimeError: {OP_ERROR}"  # the op, not capture_end
    assert END_ERROR not in runner.reason and lines == [f"fake: eager steps: {runner.reason}"]
    assert cuda.current is cuda.default and not cuda.capturing                      # off the capture stream
    assert [g.was_reset for g in cuda.graphs] == [True]                            # the graph and its pool freed
    runner(_batch())
    assert m.calls == 2 and len(cuda.graphs) == 1                                  # eager from now on: no new capture


def test_a_method_that_draws_noise_fails_fast_with_one_line(monkeypatch):
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    m = Step(cuda, noise=True)
    runner = StepRunner(m, graphs=True, warmup=0)
    with pytest.raises(CaptureFailed) as info:
        runner(_batch())
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"fake: CUDA graph capture failed at RuntimeError: {OP_ERROR}; ")
    assert "does not run eagerly in this process" in msg and "train.cuda_graphs=false in a fresh process" in msg
    assert m.calls == 0                                                            # no eager step in this process
    assert cuda.current is cuda.default and not cuda.capturing and cuda.graphs[0].was_reset


def test_a_failed_replay_is_named_not_swallowed(monkeypatch):
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    runner = StepRunner(Step(cuda, noise=False, fail_in_capture=False), graphs=True, warmup=0)
    runner(_batch())
    assert runner.captured and cuda.graphs[0].replays == 1
    cuda.replay_error = "CUDA error: an illegal memory access was encountered"
    with pytest.raises(RuntimeError, match=r"^fake: CUDA graph replay failed at RuntimeError: CUDA error: an illegal "
                                           r"memory access was encountered$"):
        runner(_batch())


def test_the_methods_that_draw_noise_say_so():
    from mist_core.registry import get_method, method_names

    assert {n for n in method_names() if get_method(n).step_draws_noise} == {"air", "zhang", "ptopk"}


def test_a_sweep_retry_trains_eagerly_after_a_capture_that_failed_for_noise():
    """The trial tags its run when CaptureFailed ends it (Tune's retry of a failed trial gets a fresh worker): the
    next attempt reads the tag and trains with train.cuda_graphs=false; the failure line says why in one line."""
    from mist_core.train import RunConfig, resolve
    from sweeps.failures import failure_line
    from sweeps.trial import EAGER_TAG, graphs_off_after_failed_capture

    r = resolve(RunConfig(method="air", dataset="mnist_hard", scale="smoke", train={"device": "cpu"}))
    assert r.train_cfg.cuda_graphs is True
    assert graphs_off_after_failed_capture(r, {"mist.attempts": "2"}) is r               # no tag: as planned
    err = CaptureFailed("air: CUDA graph capture failed at RuntimeError: x; ... train.cuda_graphs=false ...")
    off = graphs_off_after_failed_capture(r, {EAGER_TAG: str(err)})
    assert off.train_cfg.cuda_graphs is False and off.run == r.run and off.method_cfg == r.method_cfg
    assert failure_line(err) == f"CaptureFailed: {err}"
