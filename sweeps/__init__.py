"""Sweeps: a sweep config (YAML, one per paper table) -> Ray Tune trials -> MLflow runs + tidy parquet rows.

    python -m sweeps.run sweeps/configs/smoke.yaml            # local Ray, MLflow in ./mlflow.db
    python -m sweeps.run sweeps/configs/smoke.yaml --resume   # continue an interrupted sweep

sweeps.cli        the `mist-bench` console command (train, preview, sweep, report, benchmark, methods, datasets)
sweeps.command    the one error path every entry point shares: an expected failure is one line and exit code 2
sweeps.estimate   planned steps and core-hours of a sweep from measured seconds per step (`--check`)
sweeps.config     the schema of a sweep config and its validation (every (dataset, method) cell resolved up front)
sweeps.preflight  can this machine run the plan: the trials' device, the storage folder, the MLflow store
sweeps.run        the command line (`main(argv)`, `run_sweep`)
sweeps.driver     the runner: phase 1 Optuna search per cell, phase 2 the best config on every seed
sweeps.search     phase 1 in Tune's terms: search space, Optuna searcher, ASHA, the best trial
sweeps.spec       what one trial runs: a typed, frozen TrialSpec built from the plan, carried by Tune
sweeps.trial      the Tune trainable: one trial = one Trainer run, checkpointed, in its own MLflow run
sweeps.progress   the driver's Tune callback: progress lines, tidy rows, no trial run left RUNNING
sweeps.store      the sweep's directory on storage (sweep.json, best parameters) and --resume / --fresh
sweeps.storage    the storage location parsed and reached once, bounded (`check_storage`): --check, run, resume
sweeps.cluster    joining or starting Ray; warnings about paths other nodes cannot reach
sweeps.interrupts Ctrl-C and SIGTERM: the sweep ends as interrupted, resumable
sweeps.tracking   MLflow: one parent run per sweep, one nested run per trial (found again after a resume)
sweeps.artifacts  a trial's files: predictions (one npz), figures during training, heatmap snapshots
sweeps.results    tidy rows -> storage/<sweep>/results.parquet, `load_results(path)`
"""
