"""The oracle ladder: where MIST's localisation gap sits, measured at equal steps.

    python -m bench.ladder run --task recon --steps 1000 --seeds 0 --rungs task_on_gt,heatmap_on_gt,mist \
        [-m KEY=VALUE ...] [--save-dir runs/ladder] --out bench/measured/ladder/recon-s0.json
    python -m bench.ladder table bench/measured/ladder/recon-*.json     # Markdown: mean ± std over seeds

Rungs (each one Trainer run, by default of the quick scale on mnist_hard; the same steps, data and seed):
  task_on_gt     (a) the task network alone, trained and evaluated on patches at the ground-truth centres:
                 the RMSE / classification ceiling of the task network at this scale.
  heatmap_on_gt  (b) the heatmap network alone, regressed to G(ground-truth centres): the detection ceiling.
  mist           (c) full MIST, the quick preset.
  no_*           (d) MIST with one of the preset's changes removed (RUNGS says which fields); candidates: -m.
  grid, channelwise, air, ptopk, kmeans, trivial   the comparisons at the same steps, the non-learned floor, the mean image.
Every rung writes its evaluation history (every `--eval-every` steps on 256 test images, the final one on 1,000).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.cli import write_json_atomic
from bench.machine import machine_info
from baselines.supervised import gt_keypoints
from mist_core import metrics
from mist_core.config import parse_overrides
from mist_core.mist import MIST
from mist_core.sampler import keypoint_boxes, sample_patches
from mist_core.train import RunConfig, Trainer
from mist_core.types import Batch, Prediction

__all__ = ["RUNGS", "OracleTask", "OracleHeatmap", "oracle_keypoints", "run_rung"]

# name -> (method, method overrides, train overrides); overrides are relative to the quick presets
RUNGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "task_on_gt": ("bench.ladder:OracleTask", {}, {}),
    "heatmap_on_gt": ("bench.ladder:OracleHeatmap", {}, {}),
    "mist": ("mist", {}, {}),
    "no_blur": ("mist", {"heat_sigma": 0.0}, {}),
    "no_decay": ("mist", {}, {"lr_decay": "none"}),
    # none of the quick preset's localisation changes: spike G, 4 heatmap blocks, NMS 5, constant lr
    "no_changes": ("mist", {"heat_sigma": 0.0, "heat_blocks": 4, "nms_window": 5}, {"lr_decay": "none"}),
    "grid": ("grid", {}, {}),                 # the same steps: the RMSE MIST must beat
    "kmeans": ("kmeans", {}, {}),             # the non-learned floor (one pass: nothing to learn)
    "trivial": ("trivial", {}, {}),           # the mean image (one pass)
    "channelwise": ("channelwise", {}, {}),   # the paper's Table 1 order at the same steps: MIST < grid < ch.-wise
    "air": ("air", {}, {}),                   # < AIR (Esl16)
    "ptopk": ("ptopk", {}, {}),               # MIST's networks, E_K relaxed by perturbed top-K instead of lifted
    "mist_reach": ("mist_reach", {}, {}),     # MIST with the relocation step (ours, not the paper's)
}


def oracle_keypoints(m: MIST, batch: Batch) -> tuple[Tensor, Tensor]:
    """Ground-truth keypoints (B, L, 3) for MIST's scale range and their mask (B, L); padding lies off the canvas."""
    return gt_keypoints(batch.boxes, batch.counts, m.cfg.sizes[0], m.cfg.sizes[-1])


class OracleTask(MIST):
    """(a) Only the task network trains, on patches at the ground-truth centres."""

    name = "oracle_task"
    oracle = True  # (run as a script this module is __main__: isinstance against its classes would fail)

    def train_step(self, batch: Batch) -> dict[str, float]:
        kp, valid = oracle_keypoints(self, batch)
        out = self.head(sample_patches(batch.images, kp, self.cfg.patch_res), kp, batch, valid)
        self.opt_task.zero_grad(set_to_none=True)
        out.loss.mean().backward()
        self.opt_task.step()
        return {"task": float(out.loss.detach().mean())}

    @torch.no_grad()
    def predict_gt(self, batch: Batch) -> Prediction:
        """Boxes at the ground-truth centres; the task outputs there (padding patches masked out)."""
        kp, valid = oracle_keypoints(self, batch)
        out = self.head(sample_patches(batch.images, kp, self.cfg.patch_res), kp, batch, valid)
        return Prediction(boxes=keypoint_boxes(kp), scores=valid.float(), recon=out.recon, class_probs=out.class_probs)


class OracleHeatmap(MIST):
    """(b) Only the heatmap network trains, regressed to G(ground-truth centres) with unit weights."""

    name = "oracle_heatmap"
    oracle = True

    def train_step(self, batch: Batch) -> dict[str, float]:
        kp, valid = oracle_keypoints(self, batch)
        h_scales, _ = self.heat(batch.images)
        loss = self.stage_heatmap(h_scales, kp, torch.zeros(len(batch), device=kp.device), valid)
        return {"heat": float(loss)}


class _GTTrainer(Trainer):
    """Evaluates OracleTask at the ground-truth centres (its predict() cannot see them)."""

    def evaluate(self, n):
        data = self.splits.test
        n = len(data) if n is None else min(n, len(data))
        self.method.eval()
        parts = [self.method.predict_gt(data.batch(slice(i, min(i + 64, n))).to(self.method.device)).detach_cpu()
                 for i in range(0, n, 64)]
        self.method.train()
        pred = Prediction(*(None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])
                            for f in ("boxes", "scores", "recon", "class_probs")))
        return metrics.evaluate_predictions(pred, data.subset(n)), pred


def placement(pred: Prediction, boxes: Tensor, counts: Tensor) -> dict[str, float]:
    """How the top-count boxes sit on the digits: the mean distance (px) from a ground-truth centre to the nearest
    predicted centre, the share of digits with none within 4 px (IoU .5 of two 20 px squares needs about 3.7 px
    per axis), and the mean number per image of predicted centres closer than 10 px (two patches on one digit)."""
    K = pred.boxes.shape[1]
    keep = torch.arange(K)[None] < counts[:, None].clamp(max=K)                       # (B, K)
    pc = (pred.boxes[..., :2] + pred.boxes[..., 2:]) / 2                              # (B, K, 2)
    gc = (boxes[..., :2] + boxes[..., 2:]) / 2                                        # (B, L, 2)
    gvalid = torch.arange(boxes.shape[1])[None] < counts[:, None]                     # (B, L)
    d = torch.cdist(gc, pc).masked_fill(~keep[:, None, :], float("inf")).amin(-1)     # (B, L)
    pp = torch.cdist(pc, pc)                                                          # (B, K, K)
    pair = keep[:, :, None] & keep[:, None, :] & torch.ones(K, K, dtype=torch.bool).triu(1)
    return {"gt_to_kp_px": float(d[gvalid].mean()), "gt_far_4px": float((d[gvalid] > 4).float().mean()),
            "close_pairs_10px": float(((pp < 10) & pair).sum((1, 2)).float().mean())}


def detection_after_x_step(m: MIST, data, n: int) -> float:
    """Detection (IoU .5) of MIST's placements after its keypoint step (the x that G regresses the heatmap to) on
    the first n test images: above the heatmap's own E_K, the heatmap does not follow x (the coupling is the
    limit); level with it, the x step does not improve on the heatmap (the task signal is)."""
    found = total = 0.0
    n = min(n, len(data))
    for i in range(0, n, 64):
        b = data.batch(slice(i, min(i + 64, n))).to(m.device)
        _, _, kp0, scores = m.detect(b.images)
        x, _, _ = m.keypoint_targets(b, kp0, scores)                                   # (B, K, 3)
        keep = torch.arange(x.shape[1], device=x.device)[None] < b.counts[:, None]
        d = metrics.detection_scores(keypoint_boxes(x).cpu(), keep.cpu(), None, metrics.square_boxes(
            b.boxes.cpu().numpy()), b.labels.cpu(), b.counts.cpu())
        found += d["det_rate"] * int(b.counts.sum())
        total += int(b.counts.sum())
    return found / max(total, 1)


def per_class_detection(pred: Prediction, data) -> dict[str, float]:
    """Detection (IoU .5) of each digit class: which digits a method finds, from its predictions on `data`."""
    from mist_core.metrics import match_greedy, square_boxes

    K = pred.boxes.shape[1]
    gt = square_boxes(data.boxes)                                                      # (N, L, 4)
    found, total = np.zeros(10), np.zeros(10)
    for n in range(len(data)):                                                         # evaluation, not a step
        keep = np.arange(K) < min(int(data.counts[n]), K)
        L = int(data.counts[n])
        _, gi, _ = match_greedy(pred.boxes[n, keep].numpy(), gt[n, :L])
        labels = data.labels[n, :L]
        np.add.at(total, labels, 1)
        np.add.at(found, labels[gi], 1)
    return {str(c): float(found[c] / total[c]) for c in range(10) if total[c]}


def x_step_monitor(trainer: Trainer, n: int):
    """A Trainer callback: at each report, the detection of the keypoints the x step regresses the heatmap to, on
    the first n test images (`det_after_x` in the history: whether the x step moves towards the digits or away)."""
    def callback(report: dict[str, float], tr: Trainer) -> None:
        report["det_after_x"] = detection_after_x_step(tr.method, tr.splits.test, n)
    return callback


def rung_config(rung: str, task: str, seed: int, steps: int, eval_every: int, threads: int | None,
                dataset: str = "mnist_hard", scale: str = "quick", dataset_params: dict | None = None,
                method_params: dict | None = None) -> RunConfig:
    """The run of one rung: its method and overrides, then the command line's."""
    method, mparams, tparams = RUNGS[rung]
    return RunConfig(method=method, dataset=dataset, task=task, scale=scale, seed=seed,
                     method_params={**mparams, **(method_params or {})}, dataset_params=dataset_params or {},
                     train={"max_steps": steps, "max_seconds": None, "eval_every": eval_every, "threads": threads,
                            **tparams})


def run_rung(rung: str, task: str, seed: int, steps: int, eval_every: int, threads: int | None,
             dataset: str = "mnist_hard", scale: str = "quick", dataset_params: dict | None = None,
             method_params: dict | None = None, save_dir: str | None = None) -> dict[str, Any]:
    cfg = rung_config(rung, task, seed, steps, eval_every, threads, dataset, scale, dataset_params, method_params)
    method = cfg.method
    trainer = (_GTTrainer if rung == "task_on_gt" else Trainer)(cfg)
    # the keypoints MIST's x step regresses the heatmap to (methods that train another way have none)
    lifted = type(trainer.method).train_step is MIST.train_step and not getattr(trainer.method, "oracle", False)
    t0 = time.perf_counter()
    res = trainer.run(callback=x_step_monitor(trainer, 128) if lifted else None, progress=True)
    test = trainer.splits.test.subset(res.example.boxes.shape[0]).batch(slice(None))
    final = dict(res.metrics)
    if res.example.boxes.shape[1] > 0:  # the mean image places no boxes
        final.update(placement(res.example, test.boxes, test.counts))
        final["per_class_det"] = per_class_detection(res.example, trainer.splits.test.subset(test.counts.shape[0]))
    if save_dir:  # the trained state, for diagnostics after the fact (torch.load(..., weights_only=True))
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        torch.save(trainer.state_dict(), Path(save_dir) / f"{task}-{rung}-s{seed}.pt")
    if lifted:
        final["det_after_x"] = detection_after_x_step(trainer.method, trainer.splits.test, len(test))
    return {"rung": rung, "overrides": method_params or {}, "task": task, "seed": seed,
            "steps": int(res.metrics["step"]), "dataset": dataset, "scale": scale, "method": method,
            "method_params": cfg.method_params, "train": cfg.train,
            "method_config": trainer.resolved.method_cfg.model_dump(mode="json"),  # what ran, whatever the preset
            "train_config": trainer.tcfg.model_dump(mode="json"),
            "wall_seconds": time.perf_counter() - t0, "history": res.history, "final": final}


def _table(rows: list[dict[str, Any]]) -> str:
    keys = [("rmse", "RMSE"), ("det_rate", "det@.5"), ("cls_acc", "classif."), ("both", "Both"),
            ("gt_to_kp_px", "digit->kp px"), ("gt_far_4px", "digits >4 px"), ("close_pairs_10px", "pairs <10 px"), ("det_after_x", "det of x")]
    out = ["| task | rung | seeds | steps | " + " | ".join(k[1] for k in keys) + " | best det (step) | s/step | "
           "core-s/step |", "|---|---|---|---|" + "---|" * len(keys) + "---|---|---|"]
    # runs of one configuration, however it was spelled (a preset's value or the same override); fields that only
    # some runs of a (task, rung) record (the method gained a field in between) do not split them
    fields: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        keys_r = set(r.get("method_config", {}))
        fields[r["task"], r["rung"]] = fields.get((r["task"], r["rung"]), keys_r) & keys_r
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        config = {k: r["method_config"][k] for k in fields[r["task"], r["rung"]]}
        groups.setdefault((r["task"], r["rung"], json.dumps(config, sort_keys=True)), []).append(r)
    for (task, rung, _), rs in sorted(groups.items()):
        cells = []
        for k, _ in keys:
            v = [r["final"][k] for r in rs if k in r["final"]]
            cells.append("-" if not v else f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        best = [max((h.get("det_rate", 0.0), h["step"]) for h in r["history"]) for r in rs]
        sps = np.mean([r["final"]["seconds"] / max(r["final"]["step"], 1) for r in rs])
        cps = np.mean([r["final"]["core_seconds"] / max(r["final"]["step"], 1) for r in rs])
        common = [set(r.get("overrides", {}).items()) for r in rs]
        label = rung + "".join(f" {k}={v}" for k, v in sorted(set.intersection(*common)))
        out.append(f"| {task} | {label} | {','.join(str(r['seed']) for r in rs)} | {rs[0]['steps']} | "
                   + " | ".join(cells) + " | " + ", ".join(f"{d:.3f} ({int(s)})" for d, s in best)
                   + f" | {sps:.2f} | {cps:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from sweeps.command import Parser, run_command

    ap = Parser(prog="python -m bench.ladder", description=__doc__.split("\n")[0])
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the rungs, write one JSON")
    r.add_argument("--task", choices=["recon", "classify"], default="recon")
    r.add_argument("--rungs", default="task_on_gt,heatmap_on_gt,mist")
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--steps", type=int, default=1000)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--threads", type=int)
    r.add_argument("--dataset", default="mnist_hard")
    r.add_argument("--scale", default="quick", choices=["smoke", "quick", "paper"])
    r.add_argument("--method-param", "-m", action="append", default=[], metavar="KEY=VALUE",
                   help="a method override on top of every rung's (e.g. -m heat_width=16)")
    r.add_argument("--save-dir", help="save each rung's final trainer state here (not in git: runs/ is ignored)")
    r.add_argument("--out", required=True)
    t = sub.add_parser("table", help="Markdown table of ladder JSON files")
    t.add_argument("files", nargs="+")
    a = ap.parse_args(argv)
    if a.cmd == "table":
        rows = [row for f in a.files for row in json.loads(Path(f).read_text())["rows"]]
        print(_table(rows))
        return 0
    rungs = [x for x in a.rungs.split(",") if x]
    unknown = [x for x in rungs if x not in RUNGS]
    if unknown:
        ap.error(f"--rungs: unknown {', '.join(unknown)}; known: {', '.join(RUNGS)}")
    return run_command(lambda: _run(a, rungs, argv), a.debug)


def _run(a: argparse.Namespace, rungs: list[str], argv: list[str] | None) -> int:
    from mist_core.train import resolve
    from sweeps.command import writable_file
    from sweeps.preflight import check_run

    writable_file(a.out, "--out")
    for seed in a.seeds:  # every run checked as a sweep's plan checks it, before the first one trains
        for rung in rungs:
            check_run(resolve(rung_config(rung, a.task, seed, a.steps, a.eval_every, a.threads, a.dataset, a.scale,
                                          method_params=parse_overrides(a.method_param))))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    doc: dict[str, Any] = {"command": "python -m bench.ladder " + " ".join(sys.argv[1:] if argv is None else argv),
                           "machine": machine_info("cpu"), "rows": []}
    for seed in a.seeds:
        for rung in rungs:
            doc["rows"].append(run_rung(rung, a.task, seed, a.steps, a.eval_every, a.threads, a.dataset, a.scale,
                                        method_params=parse_overrides(a.method_param), save_dir=a.save_dir))
            write_json_atomic(a.out, doc)  # after every rung: an interrupted ladder keeps what it measured
    print(_table(doc["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
