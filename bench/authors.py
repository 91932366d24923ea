"""Our MIST training step at exactly the authors' MNIST configuration: images/s, with the machine in the JSON.

    python -m bench --only authors [--device cuda] [--repeats N] [--warmup N] [--threads N] --out FILE.json
    python -m bench.authors [the same options] --out FILE.json

The authors' MNIST hard run (their code's settings; the architecture as the paper's appendices A and C): the
classification task, 80 x 80 images with 9 digits of 20 px, K = 9, batch 32, one patch scale of 20 px, a heatmap
network of 4 blocks of 32 channels, 32 x 32 patches, a classifier of 5 levels of 3 blocks from 8 channels, 2 SGD
steps on the keypoints. Every other MIST field is the `paper` preset's (learning rates, softmax and NMS windows:
they do not change a step's work). Measured as the `steps` item measures a row (bench.steps.measure_case): one
batch of the dataset, `warmup` untimed steps, then `repeats` timed calls of MIST's train_step. Beside it, as the
`flops` item: the step's FLOPs (convolutions and matmuls, forward and backward) over its median time against the
best conv2d rate measured in the same run, and the images/s the step would reach at that rate.
"""
from __future__ import annotations

import sys
from types import MappingProxyType

from bench.flops import conv_peak, count_step_flops
from bench.settings import Settings
from bench.steps import measure_case
from bench.workload import build, load_case

__all__ = ["TASK", "BATCH_SIZE", "DATASET", "DATA", "MIST_FIELDS", "load", "run"]

TASK = "classify"
BATCH_SIZE = 32
DATASET = "mnist_hard"
DATA = MappingProxyType({"canvas": 80, "digit_size": 20, "count_range": (9, 9)})
MIST_FIELDS = MappingProxyType({"k": 9, "sizes": (20.0,), "heat_width": 32, "heat_blocks": 4, "patch_res": 32,
                                "task_levels": 5, "task_blocks": 3, "task_width": 8, "kp_steps": 2})
BASE_SCALE = "paper"   # the preset every field not named above comes from


def load(device: str = "cpu", seed: int = 0):
    """The resolved run (bench.workload.load_case) and one batch of data at the authors' configuration."""
    return load_case("mist", TASK, BASE_SCALE, device, DATASET, seed, method_params=dict(MIST_FIELDS),
                     dataset_params=dict(DATA), batch_size=BATCH_SIZE)


def run(s: Settings) -> dict:
    r, splits = load(s.device)
    print(f"[bench] authors: MIST/{TASK}, batch {BATCH_SIZE}, {dict(MIST_FIELDS)}", file=sys.stderr, flush=True)
    row = {"method": "mist", "task": TASK, "dataset": DATASET, **measure_case(r, splits, s)}
    # how near the machine's limit the step is: its counted FLOPs at the measured time against conv2d's best rate
    flops, _ = count_step_flops(build(r, splits))
    peak = max(c["gflops_per_s"] for c in conv_peak(s.conv_shapes, s))
    achieved = flops / (row["median_ms"] / 1e3) / 1e9
    row.update(step_flops=flops, achieved_gflops_per_s=achieved, conv_peak_gflops_per_s=peak,
               ratio_to_conv_peak=achieved / peak, images_per_s_at_conv_peak=BATCH_SIZE * peak * 1e9 / flops)
    return {"device": s.device, "repeats": s.repeats, "method_config": r.method_cfg.model_dump(mode="json"),
            "dataset_config": r.dataset_cfg.model_dump(mode="json"), "rows": [row]}


if __name__ == "__main__":
    from bench.cli import main

    sys.exit(main(["--only", "authors", *sys.argv[1:]]))
