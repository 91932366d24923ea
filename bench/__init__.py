"""bench: the performance benchmark suite. One command, JSON out:

    python -m bench [--only steps,host,concurrency,breakdown,flops,sweep,data,authors] [--scales quick,paper] [--methods ...]
                    [--device cpu|cuda] [--repeats N] [--tiny] --out bench/results/<name>.json
    python -m bench.table bench/results/<name>.json      # the JSON as Markdown tables

Items, one module each (each exposes `run(settings) -> dict`):
  steps      training-step throughput of every registered method (ms/step, images/s, peak memory)
  host       host work per step of every learning method: aten ops, host reads; on CUDA launches, syncs, kernel share
  concurrency  aggregate images/s of 1, 2, 4, 8 concurrent MIST trials on one device (the sweeps' fractional GPU)
  breakdown  where one MIST step's time goes (torch.profiler ranges + isolated fwd+bwd timings per component)
  flops      achieved FLOP/s of a MIST step (FlopCounterMode) against a measured conv2d peak
  sweep      utilisation of a short local Ray sweep: training core-seconds / (wall seconds x cores)
  data       data generation throughput of every dataset generator (images/s)
  authors    MIST's training step at exactly the authors' MNIST configuration (images/s); also python -m bench.authors
  trial_split  a whole benchmark trial per method, its core-seconds split into set-up, steps, evaluations, figures,
             checkpoints (only with --only: at quick scale it trains every method's full budget)
Shared pieces: settings (what to run), machine (what it ran on), timing, memory, workload (method + batch).
"""

ITEMS: tuple[str, ...] = ("steps", "host", "concurrency", "breakdown", "flops", "sweep", "data", "authors",
                          "trial_split")
DEFAULT_ITEMS: tuple[str, ...] = tuple(i for i in ITEMS if i != "trial_split")  # what runs without --only
SCHEMA_VERSION = 1
