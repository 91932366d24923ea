"""One training loop for every method: train for a budget, evaluate on the held-out test split, report.

    cfg = RunConfig(method="mist", dataset="mnist_hard", task="recon", scale="quick", seed=0)
    result = Trainer(cfg).run(callback=print)

The budget is `max_steps`; a method with nothing to learn (`Method.learns = False`) runs one pass over the
training data instead when that is fewer steps. Steps run through mist_core.graphs.StepRunner (on CUDA a captured
graph where the method allows it); their losses stay on the device, summed there, and are read to the host only
for a report or a progress line, so a step never waits for the host. The callback receives a report (a flat dict of floats: step, the
steps run so far; seconds, core_seconds, mean training losses since the previous report, test metrics) at every
`eval_every` steps and at the end; it may return True to stop. A sweeper hooks in there (and saves
`trainer.state_dict()` as a checkpoint: the method, the step, the RNGs (CPU, numpy, and the CUDA device's when
it trains on one) and the data position, so a resumed run trains on the batches and noise an unbroken one
would). The loop never asks which method it is training.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch

from mist_core import metrics
from mist_core._runtime import configure_torch
from mist_core.config import ConfigError, StrictConfig, parse_config
from mist_core.data import dataset_config, load_splits
from mist_core.batches import DeviceSplit
from mist_core.data.container import MultiInstanceData, Splits
from mist_core.graphs import StepRunner
from mist_core.method import Method
from mist_core.optim import get_lrs, set_lrs
from mist_core.precision import apply_precision, step_autocast
from mist_core.presets import DATA_PRESETS, Scale, TrainConfig, train_config
from mist_core.registry import get_method
from mist_core.types import Prediction

__all__ = ["RunConfig", "Resolved", "resolve", "Trainer", "RunResult", "predict_split", "step_budget"]

log = logging.getLogger("mist_core.train")
Callback = Callable[[dict[str, float], "Trainer"], "bool | None"]
HEARTBEAT_S = 20.0   # a progress line at least this often (a researcher should not wait 30 s for one)


def step_budget(max_steps: int, n_train: int | None, batch_size: int, learns: bool) -> int:
    """The steps a run trains: max_steps, or for a method with nothing to learn at most one pass over n_train."""
    return max_steps if learns or n_train is None else min(max_steps, math.ceil(n_train / batch_size))


class RunConfig(StrictConfig):
    """One training run: a method on a dataset for a task at a scale, with overrides of each preset."""

    method: str
    dataset: str
    task: Literal["recon", "classify"] = "recon"
    scale: Scale = "quick"
    seed: int = 0
    method_params: dict[str, Any] = {}
    dataset_params: dict[str, Any] = {}
    train: dict[str, Any] = {}
    cache_dir: str | None = None


@dataclass(frozen=True)
class Resolved:
    """A RunConfig with every preset applied and validated: what actually runs."""

    run: RunConfig
    method_cls: type[Method]
    method_cfg: StrictConfig
    dataset_cfg: StrictConfig
    train_cfg: TrainConfig

    def as_params(self) -> dict[str, Any]:
        """Flat, loggable parameters: method.*, dataset.*, train.* and the run's own fields."""
        out: dict[str, Any] = {k: getattr(self.run, k) for k in ("method", "dataset", "task", "scale", "seed")}
        for prefix, c in (("method", self.method_cfg), ("dataset", self.dataset_cfg), ("train", self.train_cfg)):
            out.update({f"{prefix}.{k}": v for k, v in c.model_dump().items()})
        return out


def resolve(cfg: RunConfig | dict) -> Resolved:
    """Validate everything a run needs before anything starts; errors name the bad field."""
    cfg = parse_config(RunConfig, cfg, where="run")
    try:
        method_cls = get_method(cfg.method)
    except KeyError as e:
        raise ConfigError(f"run.method: {e.args[0]}") from None   # str(KeyError) would quote the message
    except (TypeError, ImportError) as e:
        raise ConfigError(f"run.method: {e}") from None
    if cfg.task not in method_cls.tasks:
        raise ConfigError(f"run.task: method {cfg.method!r} does not support task {cfg.task!r} (supports {method_cls.tasks})")
    method_cfg = method_cls.make_config(cfg.scale, cfg.method_params)
    try:
        dataset_cfg = dataset_config(cfg.dataset, {**DATA_PRESETS[cfg.scale], **cfg.dataset_params})
    except KeyError as e:
        raise ConfigError(f"run.dataset: {e}") from None
    return Resolved(cfg, method_cls, method_cfg, dataset_cfg, train_config(cfg.scale, cfg.train))


@dataclass
class RunResult:
    metrics: dict[str, float]                 # final test metrics
    history: list[dict[str, float]]           # every report, in order
    trainer: "Trainer"
    example: Prediction | None = None         # predictions on the first test images, for figures
    extras: dict[str, Any] = field(default_factory=dict)


def predict_split(method: Method, data: MultiInstanceData, n: int | None, batch_size: int) -> Prediction:
    """Predictions on the first `n` images of `data`, concatenated along the batch, on the CPU."""
    n = len(data) if n is None else min(n, len(data))
    method.eval()
    parts = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            b = data.batch(slice(i, min(i + batch_size, n))).to(method.device)
            parts.append(method.predict(b.images, b.counts).check(len(b), data.spec, method.task).detach_cpu())
    method.train()
    return _concat(parts)


def _concat(parts: list[Prediction]) -> Prediction:
    def cat(name):
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else torch.cat(vals)
    extras = {k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras}
    return Prediction(cat("boxes"), cat("scores"), cat("recon"), cat("class_probs"), cat("heatmap"), cat("patches"), extras)


class Trainer:
    """Owns the data, the method and the step counter of one run."""

    def __init__(self, cfg: RunConfig | dict | Resolved, splits: Splits | None = None):
        self.resolved = cfg if isinstance(cfg, Resolved) else resolve(cfg)
        r = self.resolved
        self.cfg, self.tcfg = r.run, r.train_cfg
        configure_torch(self.tcfg.threads)
        apply_precision(self.tcfg.precision)       # TF32 on or off for the whole run, before anything computes
        torch.manual_seed(self.cfg.seed)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.splits = splits if splits is not None else load_splits(r.dataset_cfg, cache_dir=self.cfg.cache_dir)
        self.method = r.method_cls(r.method_cfg, self.splits.train.spec, self.cfg.task, self.tcfg.device)
        self.runner = StepRunner(self.method, self.tcfg.cuda_graphs, log=log.info)
        self.train_data = DeviceSplit(self.splits.train, self.method.device)
        self.step = 0
        self.train_seconds = 0.0
        self.core_seconds = 0.0
        n_setup = min(len(self.splits.train), 256)
        self.method.fit_setup(self.splits.train.batch(slice(0, n_setup)).images.to(self.method.device))
        # initial lrs, before any checkpoint is loaded: the schedule is a function of the step alone
        self._base_lrs = {name: get_lrs(opt) for name, opt in self.method.optimizers().items()}
        # the data position, part of a checkpoint so that a resumed run sees the batches an unbroken one would
        self.epoch = 0                                      # passes over the training split begun
        self._order = np.zeros(0, dtype=np.int64)           # (n_train,) this pass's permutation; empty before the first
        self._pos = 0                                       # index in _order of the next batch's first image

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"method": self.method.state_dict(), "step": self.step, "train_seconds": self.train_seconds,
                 "core_seconds": self.core_seconds, "torch_rng": torch.get_rng_state(),
                 "np_rng": _rng_state(self.rng),
                 "data": {"epoch": self.epoch, "order": torch.from_numpy(self._order.copy()), "pos": self._pos}}
        if self.method.device.type == "cuda":   # noise drawn on the device (air, zhang, ptopk) has its own generator
            state["cuda_rng"] = torch.cuda.get_rng_state(self.method.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.runner.reset()  # new optimiser state tensors: a captured graph would update the old ones
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.core_seconds = float(state["core_seconds"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.method.device.type == "cuda":   # a CPU checkpoint has none: left as seeded
            torch.cuda.set_rng_state(state["cuda_rng"], self.method.device)
        self.rng = _rng_from_state(state["np_rng"])
        d = state.get("data")
        if d is None:  # a checkpoint from before the data position was saved: resume with a fresh pass
            return
        order = d["order"].numpy().astype(np.int64)
        if len(order) not in (0, len(self.splits.train)):
            raise ConfigError(f"checkpoint: its data order covers {len(order)} training images, this run's training "
                              f"split has {len(self.splits.train)}")
        self.epoch, self._order, self._pos = int(d["epoch"]), order, int(d["pos"])

    # --- the loop ------------------------------------------------------------------------------
    def _pass_end(self) -> int:
        """Images of a pass that make batches: a learner drops the last partial batch (every step sees batch_size
        images), a method with nothing to learn keeps it (its one pass sees every image)."""
        n, bs = len(self.splits.train), self.tcfg.batch_size
        return n - n % bs if self.method.learns else n

    def budget_steps(self) -> int:
        return step_budget(self.tcfg.max_steps, len(self.splits.train), self.tcfg.batch_size, self.method.learns)

    def _next_batch(self):
        """The next batch of the current pass (each pass in a fresh random order), on the method's device."""
        bs, end = self.tcfg.batch_size, self._pass_end()
        if not len(self._order) or self._pos >= end:
            if end == 0:
                raise ConfigError(f"train.batch_size {bs} exceeds the training split ({len(self.splits.train)} images)")
            self._order, self._pos = self.rng.permutation(len(self.splits.train)), 0
            self.epoch += 1
        idx = np.sort(self._order[self._pos:min(self._pos + bs, end)])                     # (<= bs,)
        self._pos += bs
        return self.train_data.batch(idx)

    def lr_factor(self) -> float:
        """The schedule's multiplier of every optimiser's initial lr at the current step."""
        t = self.tcfg
        if t.lr_decay == "none":
            return 1.0
        progress = min(self.step / self.budget_steps(), 1.0)
        return t.lr_final + (1 - t.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply_lr(self) -> None:
        f = self.lr_factor()
        for name, opt in self.method.optimizers().items():
            set_lrs(opt, [base * f for base in self._base_lrs[name]])

    def budget_left(self) -> bool:
        t = self.tcfg
        return self.step < self.budget_steps() and (t.max_seconds is None or self.train_seconds < t.max_seconds)

    def evaluate(self, n: int | None) -> tuple[dict[str, float], Prediction]:
        pred = predict_split(self.method, self.splits.test, n, max(self.tcfg.batch_size, 64))
        n_eval = pred.boxes.shape[0]
        return metrics.evaluate_predictions(pred, self.splits.test.subset(n_eval)), pred

    def run(self, callback: Callback | None = None, progress: bool = True,
            heartbeat: Callable[[str], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> RunResult:
        """Train the budget. With `progress`, reports are logged; between them a line (step, steps/s, the first
        training loss) at least every HEARTBEAT_S seconds goes to `heartbeat` (default: the log, with `progress`).
        `on_step(step)` after every step (a progress bar; it reads nothing of the device)."""
        beat = heartbeat or (log.info if progress else None)
        history: list[dict[str, float]] = []
        sums: dict[str, torch.Tensor] = {}   # training losses summed on the device since the last report
        n_since = 0
        stop = False
        last_line, last_step = time.perf_counter(), self.step
        while self.budget_left() and not stop:
            batch = self._next_batch()
            t0, c0 = time.perf_counter(), time.process_time()
            if self.tcfg.lr_decay != "none":
                self._apply_lr()
            with step_autocast(self.tcfg.precision, self.method.device):
                losses = self.runner(batch)
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else torch.as_tensor(v, device=self.method.device).clone()
            self.train_seconds += time.perf_counter() - t0
            self.core_seconds += time.process_time() - c0
            self.step += 1
            n_since += 1
            if on_step is not None:
                on_step(self.step)
            now = time.perf_counter()
            if beat and now - last_line >= HEARTBEAT_S:          # evaluations can be a minute apart
                first = next(iter(sums), None)
                loss = f", train_{first}={self._read(sums, n_since)[first]:.4g}" if first else ""
                rate = (self.step - last_step) / max(now - last_line, 1e-9)
                beat(f"step {self.step}/{self.budget_steps()}, {rate:.2f} steps/s{loss}")
                last_line, last_step = now, self.step
            if self.step % self.tcfg.eval_every == 0 and self.budget_left():
                report = self._report(sums, n_since, self.tcfg.eval_images)[0]
                sums, n_since = {}, 0
                history.append(report)
                if progress:
                    log.info(_fmt(report))
                    last_line, last_step = time.perf_counter(), self.step
                stop = bool(callback and callback(report, self))
        report, example = self._report(sums, n_since, self.tcfg.final_eval_images, final=True)
        history.append(report)
        if progress:
            log.info("final: " + _fmt(report))
        if callback:
            callback(report, self)
        return RunResult(metrics=report, history=history, trainer=self, example=example)

    def _read(self, sums: dict[str, torch.Tensor], n: int) -> dict[str, float]:
        """Mean training losses over the last `n` steps, read to the host (the only place a step's losses are read).

        On CUDA the steps queued so far finish first; that wait is training time. A non-finite mean (a NaN or inf
        in any of those steps) raises FloatingPointError naming the loss and the steps."""
        if self.method.device.type == "cuda":
            t0 = time.perf_counter()
            torch.cuda.synchronize(self.method.device)
            self.train_seconds += time.perf_counter() - t0
        means = {k: float(v) / max(n, 1) for k, v in sums.items()}
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"{self.cfg.method}: training loss {', '.join(bad)} is not finite "
                                     f"({', '.join(f'{v}' for v in bad.values())}) in steps {self.step - n + 1}-"
                                     f"{self.step}")
        return means

    def _report(self, sums, n, n_eval, final=False):
        losses = self._read(sums, n)
        mets, pred = self.evaluate(n_eval)
        report = {"step": float(self.step), "seconds": self.train_seconds, "core_seconds": self.core_seconds,
                  **{f"train_{k}": v for k, v in losses.items()}, **mets}
        if final:
            report["final"] = 1.0
            # the seconds cap is a safety limit: a run it stopped short of its budget is marked, not silently shorter
            report["stopped_by_seconds"] = float(self.step < self.budget_steps())
        return report, pred


def _fmt(report: dict[str, float]) -> str:
    keys = [k for k in report if k not in ("final",)]
    return " ".join(f"{k}={report[k]:.4g}" for k in keys[:14])


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    s = rng.bit_generator.state  # PCG64: state.state and state.inc are Python ints up to 128 bits
    return {"state": torch.tensor(_split128(s["state"]["state"])), "inc": torch.tensor(_split128(s["state"]["inc"])),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def _rng_from_state(d: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    m = (1 << 64) - 1
    join = lambda t: ((int(t[0]) & m) << 64) | (int(t[1]) & m)  # noqa: E731
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": join(d["state"].tolist()),
                               "inc": join(d["inc"].tolist())}, "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}
    return rng


def _split128(x: int) -> list[int]:
    # two unsigned 64-bit halves stored in int64 tensors via two's complement
    hi, lo = x >> 64, x & ((1 << 64) - 1)
    return [hi - (1 << 64) if hi >= 1 << 63 else hi, lo - (1 << 64) if lo >= 1 << 63 else lo]
