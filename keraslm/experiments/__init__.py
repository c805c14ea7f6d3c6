"""The paper's experiments as resumable batches of training runs, pooled into Markdown tables.

The scripts in `experiments/` parse their arguments and call one function here (modules:
`runs` - execution, stored errors, pooling; `paper` - Tables 1 and 2; `isbi2015` - the ISBI
cross-validation; tables come from `keraslm.evaluation.tables`):

- `table1(...)`: Payer et al. 2016, Table 1 on the 2D phantom: the four architectures,
  k-fold cross-validation, the full training set and a reduced one (heavier augmentation).
- `table2(...)`: Table 2 on the 3D phantom: the four architectures, repeated random splits.
- `isbi2015_cv(...)`: k-fold cross-validation of SCN and U-Net on the ISBI 2015 training
  images, single-stage and coarse-to-fine (refined, and with two folds or more the stages
  blended per landmark with weights fitted on the other folds): MRE +- SD, SDR at 2 / 2.5 / 3 /
  4 mm, per-fold and per-landmark tables, cumulative error curve.

Each writes into its output folder:

    runs/<group>_<architecture>_<part>/   one training run folder each (`keraslm.training.train`)
    table.md                             the generated table(s) with the settings and wall time
    results.json                         all numbers, the settings, per-run timings, wall time

A run whose folder holds `metrics.json` has finished and is skipped when the experiment is run
again; a run interrupted while training (checkpoints, no metrics.json) is resumed. The point
errors of each run (`errors_mm.npy`, in the validation order of its `metrics.json`) are kept in
its folder, so finished runs are pooled without predicting again; if that file is missing the
run is evaluated again with `keraslm.evaluation.evaluate_runs`. A coarse-to-fine pair keeps
both stages' held-out points in the global run's folder (`stage_points_mm.npz`, `stage_points`),
predicted again when either run's model changes.

Errors are pooled over the runs of one table row (all folds, or all random splits), as in the
paper, and summarised with `keraslm.evaluation.summarize` (physical mm).
"""
from keraslm.evaluation.tables import format_landmark_table, format_paper_table, format_sdr_table
from keraslm.experiments.isbi2015 import LocalStageSettings, isbi2015_cv
from keraslm.experiments.paper import sizes, table1, table2, weight_ratios
from keraslm.experiments.runs import (
    METHOD_LABELS,
    PAPER_ARCHITECTURES,
    Run,
    StagePoints,
    blended_fold_errors,
    execute,
    pooled_errors,
    refined_run_errors,
    run_errors,
    run_finished,
    stage_points,
)

__all__ = [
    "LocalStageSettings",
    "METHOD_LABELS",
    "PAPER_ARCHITECTURES",
    "Run",
    "StagePoints",
    "blended_fold_errors",
    "execute",
    "format_landmark_table",
    "format_paper_table",
    "format_sdr_table",
    "isbi2015_cv",
    "pooled_errors",
    "refined_run_errors",
    "run_errors",
    "run_finished",
    "sizes",
    "stage_points",
    "table1",
    "table2",
    "weight_ratios",
]
