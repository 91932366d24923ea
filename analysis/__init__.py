"""Results -> tidy pandas frames -> the paper's Tables 1-4, paired comparisons, cost, figures and the report.

    python -m analysis.report SWEEP_DIR_OR_PARQUET [--out DIR]    # see analysis.report
"""
