"""Per-landmark blend of the global and refined estimates, cross-fitted over folds: is the local
stage worth using for every landmark? Saves predictions of both stages for folds 0..N-1."""
import os, sys
import numpy as np
from keraslm.evaluation import evaluate_runs
V = "/work/main/experiments/results/isbi2015_v4/runs"
N = int(sys.argv[1])
out = "/work/runs13/blend"
G, L, T = [], [], []
for f in range(N):
    path = f"{out}/fold{f}.npz"
    if not os.path.isfile(path):
        g = evaluate_runs([f"{V}/scn_fold{f}"])
        c = evaluate_runs([f"{V}/scn_fold{f}"], refine_runs=[f"{V}/local_unet_fold{f}"])
        assert g.ids == c.ids
        np.savez(path, g=g.predicted_mm, c=c.predicted_mm, t=c.ground_truth_mm, names=np.array(c.landmark_names))
    d = np.load(path)
    G.append(d["g"]); L.append(d["c"]); T.append(d["t"]); names = d["names"]
err = lambda p, t: np.linalg.norm(p - t, axis=-1)
weights = np.linspace(0, 1, 11)
tot = {"global": [], "cascade": [], "select": [], "blend": []}
for f in range(N):
    others = [k for k in range(N) if k != f]
    g_o = np.concatenate([G[k] for k in others]); l_o = np.concatenate([L[k] for k in others]); t_o = np.concatenate([T[k] for k in others])
    # per landmark weight on the local estimate, chosen on the other folds
    mean_by_w = np.stack([err(w * l_o + (1 - w) * g_o, t_o).mean(0) for w in weights])  # (W, K)
    w_best = weights[np.argmin(mean_by_w, 0)]
    sel = np.where(mean_by_w[-1] <= mean_by_w[0], 1.0, 0.0)
    tot["global"].append(err(G[f], T[f])); tot["cascade"].append(err(L[f], T[f]))
    tot["select"].append(err(sel[None, :, None] * L[f] + (1 - sel[None, :, None]) * G[f], T[f]))
    tot["blend"].append(err(w_best[None, :, None] * L[f] + (1 - w_best[None, :, None]) * G[f], T[f]))
    print(f"fold {f}: weights on local chosen on other folds:", dict(zip(names, np.round(w_best, 1))))
    print("   " + "  ".join(f"{k} {np.mean(v[-1]):.3f}" for k, v in tot.items()))
for k, v in tot.items():
    e = np.concatenate(v)
    print(f"{k:8s} MRE {e.mean():.3f} +- {e.std():.3f}  median {np.median(e):.3f}  SDR2 {100*(e<=2).mean():.1f}  >10 {(e>10).sum()}")
