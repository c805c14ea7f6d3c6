"""Issue 13, session 12: a local-stage variant against the v4 configuration's local stage, both
behind the same v4 global stage, on the folds given; blended with weights fitted on the other
folds of the v4 configuration. The variant runs behind a copy of the v4 global run
(`/work/runs13/v4g_f{K}`: model.keras, model.json, config.json). Usage: local_probe.py VARIANT_DIR_PATTERN FOLDS, e.g.
`local_probe.py /work/runs13/l3_local_f{} 0,1`."""
import sys
import numpy as np
from keraslm.calibration import blend_stages, fit_local_weight
from keraslm.experiments.runs import stage_points
V = "/work/main/experiments/results/isbi2015_v4/runs"
pattern, folds = sys.argv[1], [int(f) for f in sys.argv[2].split(",")]
v4 = {f: stage_points(f"{V}/scn_fold{f}", f"{V}/local_unet_fold{f}") for f in range(5)}


def weights(held_out):
    others = [v4[f] for f in range(5) if f != held_out]
    return fit_local_weight(*[np.concatenate([getattr(p, k) for p in others])
                              for k in ("global_mm", "refined_mm", "ground_truth_mm")])


def summary(e):
    return (f"MRE {e.mean():.3f} +- {e.std():.2f} median {np.median(e):.3f} "
            f"SDR 2/2.5/3/4 {100*(e<=2).mean():.1f}/{100*(e<=2.5).mean():.1f}/"
            f"{100*(e<=3).mean():.1f}/{100*(e<=4).mean():.1f} >10 {(e>10).sum()}")


pooled = {}
for k in folds:
    w = weights(k)
    # The variant's points are kept beside a copy of the global run (stage_points caches per
    # global run folder; the v4 folder keeps its own local stage's).
    for name, global_dir, local in (("v4 local", f"{V}/scn_fold{k}", f"{V}/local_unet_fold{k}"),
                                    ("variant", f"/work/runs13/v4g_f{k}", pattern.format(k))):
        s = stage_points(global_dir, local)
        assert s.ids == v4[k].ids
        for label, pts in (("refined", s.refined_mm),
                           ("blended", blend_stages(s.global_mm, s.refined_mm, w))):
            e = np.linalg.norm(np.asarray(pts) - s.ground_truth_mm, axis=-1)
            pooled.setdefault((name, label), []).append(e)
            print(f"fold {k} {name:9s} {label:8s} {summary(e)}")
for (name, label), es in pooled.items():
    e = np.concatenate(es)
    print(f"folds {sys.argv[2]} {name:9s} {label:8s} {summary(e)}")
    if label == "blended":
        print("   per landmark:", " ".join(f"{x:.2f}" for x in e.mean(0)))
