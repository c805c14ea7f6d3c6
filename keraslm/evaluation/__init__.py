"""Evaluation: point errors in mm, the paper's summaries, cross-validation pooling, reports.

- `keraslm.evaluation.metrics`: point errors (optionally normalised by a reference distance),
  `summarize` (median, mean +- SD, outliers > 10 mm, SDR, outlier counts), `per_landmark`,
  `pool`. Pure NumPy.
- `keraslm.evaluation.sources`: `evaluate_model`, `evaluate_runs` (training run folders,
  pooled), `evaluate_predictions` (two CSVs) -> `Evaluation`.
- `keraslm.evaluation.report`: `write_report` (prediction CSVs, metrics.json, report.md,
  plots), `write_calibration` (expected errors fitted to held-out predictions),
  `format_summary`, `table1_row`.
- `keraslm.evaluation.plots`: cumulative error curve, per-landmark box plot, overlays.

Examples:
    >>> evaluation = evaluate_runs(["runs/fold0", "runs/fold1"])  # doctest: +SKIP
    >>> write_report("evaluation", evaluation)  # doctest: +SKIP
"""
from keraslm.evaluation.metrics import (
    OUTLIER_RADII_MM,
    SDR_RADII_MM,
    PointErrors,
    per_landmark,
    point_errors,
    pool,
    summarize,
)
from keraslm.evaluation.report import (format_baseline, format_calibration_quality, format_summary,
                                       write_calibration, write_report)
from keraslm.evaluation.tables import table1_row
from keraslm.evaluation.sources import (
    Evaluation,
    blend_evaluation,
    combine,
    evaluate_model,
    evaluate_predictions,
    evaluate_runs,
    held_out_groups,
    open_dataset,
    run_test_set,
)

__all__ = [
    "format_baseline",
    "Evaluation",
    "OUTLIER_RADII_MM",
    "PointErrors",
    "SDR_RADII_MM",
    "blend_evaluation",
    "combine",
    "evaluate_model",
    "evaluate_predictions",
    "evaluate_runs",
    "held_out_groups",
    "format_calibration_quality",
    "format_summary",
    "open_dataset",
    "per_landmark",
    "point_errors",
    "pool",
    "run_test_set",
    "summarize",
    "table1_row",
    "write_calibration",
    "write_report",
]
