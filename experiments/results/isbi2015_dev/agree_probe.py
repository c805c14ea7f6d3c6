"""Issue 13, session 11: does the two stages' disagreement predict the error of the blended point
(calibration Spearman / catch)? Saves both stages' points, confidences, spreads per fold."""
import os, sys
import numpy as np
from keraslm.evaluation import evaluate_runs
V = "/work/main/experiments/results/isbi2015_v4/runs"
out = "/work/runs13/agree"
folds = [int(f) for f in sys.argv[1].split(",")]
for f in folds:
    path = f"{out}/fold{f}.npz"
    if os.path.isfile(path):
        continue
    g = evaluate_runs([f"{V}/scn_fold{f}"])
    c = evaluate_runs([f"{V}/scn_fold{f}"], refine_runs=[f"{V}/local_unet_fold{f}"])
    assert g.ids == c.ids
    np.savez(path, ids=np.array(g.ids), g=g.predicted_mm, c=c.predicted_mm, t=c.ground_truth_mm,
             gconf=g.confidence, gspread=g.spread_mm, cconf=c.confidence, cspread=c.spread_mm,
             names=np.array(c.landmark_names))
    print("saved", path, flush=True)
