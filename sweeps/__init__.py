"""Sweeps: a sweep config (YAML, one per paper table) -> Ray Tune trials -> MLflow runs + tidy parquet rows.

    python -m sweeps.run sweeps/configs/smoke.yaml            # local Ray, MLflow in ./mlflow.db
    python -m sweeps.run sweeps/configs/smoke.yaml --resume   # continue an interrupted sweep

sweeps.config   the schema of a sweep config and its validation (every (dataset, method) cell resolved up front)
sweeps.run      the runner: phase 1 Optuna search per cell, phase 2 the best config on every seed
sweeps.tracking MLflow: one parent run per sweep, one nested run per trial (found again after a resume)
sweeps.results  tidy rows -> storage/<sweep>/results.parquet, `load_results(path)`
"""
