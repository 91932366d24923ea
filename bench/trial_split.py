"""Where a benchmark trial's core-seconds go, per method: set-up, training steps, evaluations, figures, checkpoints.

One trial per method at each scale (the benchmark's: `quick.yaml`'s methods, task recon, seed 0, the scale's step
budget, 1 thread), run in this process with the pieces sweeps.trial.trainable runs between Tune's calls: the Trainer
(data and method set-up, then its steps and evaluations), sweeps.artifacts' figures and heatmap history at each
report and at the end, and the checkpoint (torch.save of Trainer.state_dict) at a report at most every
`checkpoint_interval_s` as quick.yaml sets it. Each part's process CPU time (time.process_time) is summed:
  setup        Trainer(...): the data (cached after the first method) and the method's networks
  step         the Trainer's own core_seconds (the training steps, as every result row reports them)
  evaluations  Trainer.evaluate (interim and final predictions and the evaluator)
  figures      TrialOutputs.evaluation/final and HeatmapHistory.add/write (matplotlib, PNGs rendered in memory)
  checkpoints  torch.save of the trainer's state
  other        the rest of the trial: batches, reads of the losses, the loop
Not here: MLflow's logging (the figures are rendered but not sent) and Ray's own cost (its driver, raylet and the
trial process's start); `python -m bench --only sweep` measures a local sweep's overhead outside training steps.
The quick benchmark's trials have no monitors (the oracle ladder's x-step monitors run only in `bench.ladder`).
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.settings import Settings

__all__ = ["PARTS", "trial_split", "run"]

PARTS = ("setup", "step", "evaluations", "figures", "checkpoints", "other")
QUICK = Path(__file__).resolve().parent.parent / "sweeps" / "configs" / "quick.yaml"


class _Figures:
    """The TrialRun calls sweeps.artifacts makes, with each figure rendered to PNG as MLflow's log_figure does."""

    def log_figure(self, fig, artifact_file: str) -> None:
        fig.savefig(io.BytesIO(), format="png")

    def log_file(self, path, artifact_path=None) -> None:
        Path(path).read_bytes()


class _Clock:
    def __init__(self):
        self.cpu = dict.fromkeys(PARTS, 0.0)

    @contextmanager
    def part(self, name: str):
        c0 = time.process_time()
        try:
            yield
        finally:
            self.cpu[name] += time.process_time() - c0


def trial_split(method: str, scale: str, dataset: str = "mnist_hard", checkpoint_interval_s: float = 30.0,
                train: dict | None = None) -> dict:
    """One trial of `method` at `scale`: {part: core-seconds} (PARTS), total, steps, reports, checkpoints, figures."""
    from mist_core.train import RunConfig, Trainer
    from sweeps import artifacts

    clock = _Clock()
    c_start = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        with clock.part("setup"):
            trainer = Trainer(RunConfig(method=method, dataset=dataset, task="recon", scale=scale, seed=0,
                                        train={"threads": 1, **(train or {})}))
        evaluate = trainer.evaluate

        def timed_evaluate(n):
            with clock.part("evaluations"):
                return evaluate(n)
        trainer.evaluate = timed_evaluate
        run = _Figures()
        outputs = artifacts.TrialOutputs(run, trainer.splits.test, tmp, trainer.tcfg.eval_every,
                                         trainer.budget_steps())
        history = artifacts.HeatmapHistory(trainer.splits.test)
        with clock.part("figures"):
            history.add(trainer.method, 0)
        last_ckpt, counts = [-float("inf")], {"reports": 0, "checkpoints": 0}

        def on_report(rep: dict, t) -> None:
            counts["reports"] += 1
            step = int(rep["step"])
            with clock.part("figures"):
                history.add(t.method, step)
                if not rep.get("final"):
                    outputs.evaluation(t.method, step, f"step {step}")
            if rep.get("final") or time.monotonic() - last_ckpt[0] >= checkpoint_interval_s:
                with clock.part("checkpoints"):
                    torch.save(t.state_dict(), Path(tmp) / "state.pt")
                last_ckpt[0] = time.monotonic()
                counts["checkpoints"] += 1
        result = trainer.run(on_report, progress=False)
        with clock.part("figures"):
            if result.example is not None:
                outputs.final(result.example, trainer.step, "final")
                history.write(tmp)
    total = time.process_time() - c_start
    cpu = clock.cpu
    cpu["step"] = trainer.core_seconds
    cpu["other"] = max(total - sum(v for k, v in cpu.items() if k != "other"), 0.0)
    return {"method": method, "scale": scale, "steps": trainer.step, **counts,
            "figures": len(outputs.figure_steps) + 1, "core_seconds": {k: cpu[k] for k in PARTS},
            "total_core_seconds": total, "step_share": cpu["step"] / total if total > 0 else float("nan")}


def run(s: Settings) -> dict:
    from sweeps.config import load_sweep

    quick = load_sweep(QUICK)
    methods = list(s.methods) or list(quick.methods)
    rows = []
    for scale in s.scales:
        train = {"max_steps": 4, "eval_every": 2, "eval_images": 4} if s.tiny else None
        for method in methods:
            print(f"[bench] trial_split {method} ({scale})", file=sys.stderr, flush=True)
            try:
                rows.append(trial_split(method, scale, s.dataset, quick.checkpoint_interval_s, train))
            except Exception as e:  # noqa: BLE001 - keep the other methods' numbers
                rows.append({"method": method, "scale": scale, "error": f"{type(e).__name__}: {e}"})
    return {"parts": list(PARTS), "rows": rows}
