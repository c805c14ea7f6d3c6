"""Folds 0+1 of configuration A: cascade predictions with confidence/spread, saved for offline probes."""
import numpy as np
from keraslm.evaluation import combine, evaluate_runs
R = "/work/runs13"
ev = combine([evaluate_runs([f"{R}/a_global_{f}"], refine_runs=[f"{R}/a_local_{f}"]) for f in ("f0", "f1")])
fold = np.array([0] * 30 + [1] * 30)
np.savez(f"{R}/shape/a_f01_eval.npz", ids=np.array(ev.ids), P=ev.predicted_mm, G=ev.ground_truth_mm,
         err=ev.errors.errors_mm, conf=ev.confidence, spread=ev.spread_mm, fold=fold)
print(ev.ids[:3], ev.ids[30:33], ev.errors.errors_mm.mean())
