"""Issue 13, session 11: global variant H (240x208 @ 1.0 mm) vs GG (192x160 @ 1.25 mm) on fold K
(argument, default 0), both refined by the same local stage; blended with weights fitted on the
other folds (GG's)."""
import sys
import numpy as np
from keraslm.calibration import blend_stages, fit_local_weight
from keraslm.experiments.runs import stage_points
V = "/work/main/experiments/results/isbi2015_v4/runs"
K = int(sys.argv[1]) if len(sys.argv) > 1 else 0
others = [stage_points(f"{V}/scn_fold{f}", f"{V}/local_unet_fold{f}") for f in range(5) if f != K]
w = fit_local_weight(*[np.concatenate([getattr(p, k) for p in others]) for k in ("global_mm", "refined_mm", "ground_truth_mm")])
err = lambda p, t: np.linalg.norm(p - t, axis=-1)
for name, run in (("GG 1.25 mm", f"{V}/scn_fold{K}"), ("H 1.0 mm", f"/work/runs13/h_global_f{K}")):
    s = stage_points(run, f"{V}/local_unet_fold{K}")
    for label, pts in (("global", s.global_mm), ("refined", s.refined_mm), ("blended", blend_stages(s.global_mm, s.refined_mm, w))):
        e = err(np.asarray(pts), s.ground_truth_mm)
        print(f"{name:11s} {label:8s} MRE {e.mean():.3f} +- {e.std():.2f} median {np.median(e):.3f} SDR2 {100*(e<=2).mean():.1f} >10 {(e>10).sum()}")
    e = err(np.asarray(blend_stages(s.global_mm, s.refined_mm, w)), s.ground_truth_mm).mean(0)
    print("   per landmark blended:", " ".join(f"{x:.2f}" for x in e))
