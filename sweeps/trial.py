"""The Tune trainable: one trial = one `mist_core.train.Trainer` run, inside a Ray worker.

A trial reads its Tune config once, as a `sweeps.spec.TrialSpec` (the sweep's MLflow store, experiment and parent
run, code version, fault hook and checkpoint interval; its phase; the planned run with its seed and search
parameters; the data hash). It logs to its own MLflow run (`tracking.TrialRun`, continued after a resume or retry,
where the steps it runs again are not logged a second time), reports every trainer report to Tune with a checkpoint of
`Trainer.state_dict()` (at most every `checkpoint_interval_s`), restarts from Tune's checkpoint when there is one,
and leaves its outputs (sweeps.artifacts): example figures at evaluations on its MLflow run, its final predictions
(one npz, in MLflow and under <sweep>/trials/<trial>/ for the report) before its final report, and the heatmap of
one test image from the untrained model on. Between evaluations it prints a line (step, steps/s, training loss) at
least every 20 s of training (the Trainer's heartbeat); metrics that are undefined (NaN) show as n/a.

The test hook FAULT_ENV (see sweeps.run) reaches the trials through the spec (`ctx.fault`).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from mist_core.registry import display_name
from sweeps import artifacts, tracking
from sweeps.spec import TrialSpec
from sweeps.store import join

__all__ = ["trainable", "shown_metrics", "graphs_off_after_failed_capture", "FAULT_ENV", "EAGER_TAG"]

FAULT_ENV = "MIST_SWEEP_FAULT"
# set on a trial's MLflow run when its CUDA graph capture failed where eager steps in that process were not safe
# (mist_core.graphs.CaptureFailed): Tune's retry starts a fresh worker, whose attempt then trains eagerly
EAGER_TAG = "mist.cuda_graphs_off"


def trainable(config: dict[str, Any]) -> None:
    import torch
    from ray import tune

    from mist_core.graphs import CaptureFailed
    from mist_core.train import Trainer, resolve

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # "Checkpoint created" per report
    spec = TrialSpec.of_trial(config)
    ctx, run, phase = spec.ctx, spec.run, spec.phase
    resolved = resolve(run)  # the config objects of the planned run: every field is explicit, presets change nothing
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    tags = {"method": display_name(run.method), "dataset": run.dataset, "table": ctx.table, "seed": run.seed,
            "scale": run.scale, "task": run.task, "phase": phase, "sweep": ctx.name, "trial_id": trial_id,
            "code_version": ctx.code_version, "data_hash": spec.data_hash, tracking.TAG_SWEEP: ctx.uid}
    mlrun = tracking.TrialRun(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id,
                              tracking.trial_key(ctx.uid, trial_id), tctx.get_trial_name(), tags,
                              resolved.as_params())
    resolved = graphs_off_after_failed_capture(resolved, mlrun.tags)
    fault = _fault(ctx.fault, run, phase, mlrun.attempts)
    trial_dir = join(ctx.trials_dir, tctx.get_trial_name())
    final: dict[str, float] = {}
    finished = False

    last_ckpt = [-math.inf]

    def report(metrics: dict[str, float], trainer) -> None:
        if not metrics["final"] and time.monotonic() - last_ckpt[0] < ctx.checkpoint_interval_s:
            tune.report(metrics)  # too soon after the previous checkpoint (fast methods report very often)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), Path(d) / "state.pt")
            last_ckpt[0] = time.monotonic()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    def on_report(rep: dict[str, float], trainer) -> None:
        metrics = {k: float(v) for k, v in rep.items()}
        metrics.setdefault("final", 0.0)
        step = int(metrics["step"])
        mlrun.log_report(metrics, step=step)
        history.add(trainer.method, step)
        if metrics["final"]:
            final.update(metrics)  # reported to Tune after the artifacts are safe (Tune may stop us at any report)
            return
        outputs.evaluation(trainer.method, step, _title(run, step, metrics))
        report(metrics, trainer)
        if fault is not None and step >= fault:
            raise RuntimeError(f"{FAULT_ENV}: failing on purpose after step {step}")

    try:
        trainer = Trainer(resolved)
        outputs = artifacts.TrialOutputs(mlrun, trainer.splits.test, trial_dir, trainer.tcfg.eval_every,
                                         trainer.budget_steps())
        history = artifacts.HeatmapHistory(trainer.splits.test)
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                trainer.load_state_dict(torch.load(Path(d) / "state.pt", weights_only=True))
        if trainer.step == 0:
            history.add(trainer.method, 0)                          # the untrained model's heatmap
        label = f"[{ctx.name}] {tctx.get_trial_name()}"
        result = trainer.run(on_report, progress=False, heartbeat=lambda line: print(f"{label}: {line}", flush=True))
        if result.example is not None:
            outputs.final(result.example, trainer.step, _title(run, trainer.step, final))
            history.write(trial_dir)
        shown = shown_metrics(final, [k for k in final if k not in ("step", "final", "seconds", "core_seconds")])
        mlrun.set_tags({tracking.NOTE: f"**{tags['method']}** on **{run.dataset}**, seed {run.seed}, phase {phase} "
                                       f"(Tune trial {tctx.get_trial_name()}), {trainer.step} steps, "
                                       f"{trainer.train_seconds:.1f} s of training.\n\nFinal test metrics: {shown}."
                                       "\n\nArtifacts: figures/step_NNNNNN.png (inputs with ground truth, "
                                       "detections with scores, reconstructions) at evaluations and at the end; "
                                       f"predictions/{artifacts.PREDICTIONS} (the first {artifacts.N_EXAMPLES} test "
                                       "images with the final predictions)."})
        mlrun.finish("FINISHED")
        finished = True
        report(final, trainer)
    except CaptureFailed as e:  # this process must not step eagerly: the retry (a fresh worker) runs without graphs
        mlrun.set_tags({EAGER_TAG: str(e)})
        mlrun.finish("FAILED")
        raise
    except SystemExit:
        # Tune stopped the trial at a report. Only the driver knows why, and closes the run (sweeps.progress): an
        # early stop by the scheduler FINISHED with the tag mist.stopped_by; an interrupted sweep KILLED
        raise
    except BaseException:
        if not finished:
            mlrun.finish("FAILED")
        raise


def graphs_off_after_failed_capture(resolved, tags: dict[str, str]):
    """`resolved` with train.cuda_graphs = False when an earlier attempt of this trial failed its capture where
    eager steps were not safe (EAGER_TAG on its run), else `resolved` itself."""
    if not tags.get(EAGER_TAG) or not resolved.train_cfg.cuda_graphs:
        return resolved
    import dataclasses

    print(f"CUDA graphs off for this attempt (train.cuda_graphs=false): {tags[EAGER_TAG]}", flush=True)
    return dataclasses.replace(resolved, train_cfg=resolved.train_cfg.replace(cuda_graphs=False))


def shown_metrics(metrics: dict[str, float], keys) -> str:
    """"k=v, k=v" for those of `keys` that `metrics` holds, in the order of `keys`; an undefined value is n/a."""
    return ", ".join(f"{k}={metrics[k]:.4g}" if math.isfinite(metrics[k]) else f"{k}=n/a" for k in keys
                     if k in metrics)


def _title(run, step: int, metrics: dict[str, float]) -> str:
    return (f"{display_name(run.method)} on {run.dataset}, seed {run.seed}, step {step}: "
            + shown_metrics(metrics, ("rmse", "det_rate", "both")))


def _fault(hook: str | None, run, phase: str, attempt: int) -> int | None:
    """The step after which this trial fails on purpose (FAULT_ENV), or None."""
    if not hook or attempt > 1:
        return None
    want = dict(kv.split("=", 1) for kv in hook.split(",") if "=" in kv)
    have = {"method": run.method, "dataset": run.dataset, "phase": phase, "seed": str(run.seed)}
    if any(have.get(k) != v for k, v in want.items() if k != "step"):
        return None
    return int(want.get("step", "1"))
