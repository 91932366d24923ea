"""A method's training step, run eagerly or, on CUDA, captured once in a CUDA graph and replayed.

At batch 32 every method is host-bound on a GPU: a paper-scale MIST step launches thousands of small kernels and
the GPU waits between them. A CUDA graph records the whole step (forward, backward, optimiser) once and replays it
with one launch. What that asks of a step is what `Method.cuda_graph = True` declares: no host read inside it,
fixed shapes, and no Python state that changes between steps (a replay repeats exactly the captured kernels, with
the captured scalars). The batch reaches the graph through static input buffers.

    runner = StepRunner(method, graphs=True)
    losses = runner(batch)    # {name: 0-d tensor}; under a graph, its static outputs: use them before the next call

Capture follows torch's recipe (torch.cuda.graphs): `warmup` eager steps on a side stream first, so that lazy state
(optimiser moments, cuDNN's algorithm choice) exists, then one capture, then a replay for that same batch (capturing
runs nothing). Every step counts: the warm-up steps train as eager steps do. A capture that fails is cleaned up (the
thread leaves the capture stream, the graph and its memory pool are freed) and named by the op that failed, in one
line; the method then runs eagerly, except one whose step draws random numbers (`Method.step_draws_noise`: the
default generator may be left in capture mode), which raises CaptureFailed instead. A replay that fails raises, named.
A batch of another shape than the captured one runs eagerly. After loading a checkpoint,
call `reset()`: the optimiser's state tensors are new and the graph would keep updating the old ones.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Callable

import torch
from torch import Tensor

from mist_core.method import Method
from mist_core.types import Batch

__all__ = ["StepRunner", "graph_reason", "CaptureFailed", "failed_op"]

WARMUP_STEPS = 3


class CaptureFailed(RuntimeError):
    """A capture failed for a method whose step draws random numbers (Method.step_draws_noise): eager steps in this
    process are not safe; the message says to run it with train.cuda_graphs=false in a fresh process."""


def graph_reason(method: Method, graphs: bool) -> str | None:
    """Why `method` runs eagerly (None: it will be captured)."""
    if not graphs:
        return "CUDA graphs are off (train.cuda_graphs=false)"
    if method.device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run trains on {method.device})"
    if not method.cuda_graph:
        return f"method {method.name!r} does not declare cuda_graph = True (its step may read the host or keep state)"
    return None


class StepRunner:
    """Calls `method.train_step(batch)`; on CUDA, for a method that allows it, through a captured CUDA graph."""

    def __init__(self, method: Method, graphs: bool = True, warmup: int = WARMUP_STEPS,
                 log: Callable[[str], None] | None = None):
        self.method, self.warmup, self.log = method, warmup, log
        self.reason = graph_reason(method, graphs)       # None while a graph is wanted
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: Batch | None = None
        self.static_out: dict[str, Tensor] | None = None
        self.eager_calls = 0
        if self.reason and method.device.type == "cuda" and log:
            log(f"{method.name}: eager steps: {self.reason}")

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def reset(self) -> None:
        """Forget the graph (after the method's state was replaced, e.g. by a checkpoint); capture again later."""
        self.graph, self.static_batch, self.static_out, self.eager_calls = None, None, None, 0

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        if self.reason is not None:
            return self.method.train_step(batch)
        if self.graph is not None:
            if not _same_shapes(batch, self.static_batch):
                return self.method.train_step(batch)      # e.g. a last partial batch: eager, the graph stays
            for f in fields(Batch):
                getattr(self.static_batch, f.name).copy_(getattr(batch, f.name), non_blocking=True)
            self._replay()
            return self.static_out
        self.eager_calls += 1
        if self.eager_calls <= self.warmup:
            return self._side_stream_step(batch)
        return self._capture(batch)

    def _side_stream_step(self, batch: Batch) -> dict[str, Tensor]:
        side = torch.cuda.Stream(self.method.device)
        side.wait_stream(torch.cuda.current_stream(self.method.device))
        with torch.cuda.stream(side):
            out = self.method.train_step(batch)
        torch.cuda.current_stream(self.method.device).wait_stream(side)
        return out

    def _capture(self, batch: Batch) -> dict[str, Tensor]:
        dev = self.method.device
        static = Batch(*(getattr(batch, f.name).clone() for f in fields(Batch)))
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(dev)
        before = torch.cuda.current_stream(dev)
        try:
            with torch.cuda.graph(graph):
                out = self.method.train_step(static)
        except Exception as e:  # noqa: BLE001 - whatever broke the capture: clean up, then eager where that is safe
            self._abandon(graph, before)
            self.reason = f"CUDA graph capture failed at {failed_op(e)}"
            if self.method.step_draws_noise:
                raise CaptureFailed(f"{self.method.name}: {self.reason}; its step draws random numbers, whose "
                                    "generator a failed capture may leave in capture mode, so it does not run eagerly "
                                    "in this process: run it with train.cuda_graphs=false in a fresh process (a sweep "
                                    "retries the trial so)") from e
            if self.log:
                self.log(f"{self.method.name}: eager steps: {self.reason}")
            return self.method.train_step(batch)
        floats = sorted(k for k, v in out.items() if not isinstance(v, Tensor))
        if floats:   # a Python number was computed once, at capture: every replay would report it again
            self.reason = f"train_step returns Python numbers for {floats}, not tensors"
            if self.log:
                self.log(f"{self.method.name}: eager steps: {self.reason}")
            return self.method.train_step(batch)
        self.graph, self.static_batch, self.static_out = graph, static, out
        self._replay()                                    # capturing ran nothing: this is the step for `batch`
        if self.log:
            self.log(f"{self.method.name}: training step captured in a CUDA graph after {self.warmup} eager steps")
        return self.static_out

    def _replay(self) -> None:
        try:
            self.graph.replay()
        except Exception as e:  # noqa: BLE001 - named, then raised: a replay that failed leaves nothing to trust
            raise RuntimeError(f"{self.method.name}: CUDA graph replay failed at {failed_op(e)}") from e

    def _abandon(self, graph: "torch.cuda.CUDAGraph", stream: "torch.cuda.Stream") -> None:
        """After a failed capture: end a capture still open, free the graph and its memory pool, and put this thread
        back on the stream it was on (torch.cuda.graph's __exit__ raises before it leaves its capture stream)."""
        dev = self.method.device
        if torch.cuda.is_current_stream_capturing():
            try:
                graph.capture_end()
            except Exception:  # noqa: BLE001 - the capture is invalid anyway: ending it is all that is wanted
                pass
        torch.cuda.set_stream(stream)
        try:
            graph.reset()                                 # the graph and its private memory pool
        except Exception:  # noqa: BLE001 - a graph that never began capturing has nothing to free
            pass
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()


def failed_op(error: BaseException) -> str:
    """'Type: first line' of the error that started it all: torch.cuda.graph's __exit__ raises capture_end's own
    error, whose __context__ (or __cause__) is the failing op's."""
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}".rstrip(": ")


def _same_shapes(a: Batch, b: Batch | None) -> bool:
    return b is not None and all(getattr(a, f.name).shape == getattr(b, f.name).shape for f in fields(Batch))
