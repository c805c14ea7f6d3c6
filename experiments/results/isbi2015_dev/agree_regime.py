import numpy as np
D = [np.load(f"/work/runs13/agree/fold{f}.npz") for f in (0, 1, 2)]
cat = lambda k: np.concatenate([d[k] for d in D])
g, c, t = cat("g"), cat("c"), cat("t"); names = D[0]["names"]
groups = np.repeat(np.arange(3), [len(d["ids"]) for d in D])
dis = np.linalg.norm(g - c, axis=-1)
eg = np.linalg.norm(g - t, axis=-1); ec = np.linalg.norm(c - t, axis=-1)
W = np.linspace(0, 1, 11)
def fit(gg, cc, tt):
    m = np.stack([np.linalg.norm(gg + w * (cc - gg) - tt, axis=-1).mean(0) for w in W]); return W[::-1][np.argmin(m[::-1], 0)]
for q in (0.0, 0.5, 0.75, 0.9):
    # two regimes per landmark: disagreement below / above its quantile q (thresholds from training folds)
    errs = []
    for f in range(3):
        tr, te = groups != f, groups == f
        thr = np.quantile(dis[tr], q, axis=0) if q > 0 else np.full(19, -1.0)
        lo_tr = dis[tr] <= thr
        wl = np.stack([fit(g[tr][lo_tr[:, k], k:k+1], c[tr][lo_tr[:, k], k:k+1], t[tr][lo_tr[:, k], k:k+1])[0] if lo_tr[:, k].any() else 1.0 for k in range(19)])
        wh = np.stack([fit(g[tr][~lo_tr[:, k], k:k+1], c[tr][~lo_tr[:, k], k:k+1], t[tr][~lo_tr[:, k], k:k+1])[0] if (~lo_tr[:, k]).any() else 1.0 for k in range(19)])
        lo = dis[te] <= thr
        w = np.where(lo, wl, wh)
        errs.append(np.linalg.norm(g[te] + w[..., None] * (c[te] - g[te]) - t[te], axis=-1))
    e = np.concatenate(errs)
    print(f"q {q}: MRE {e.mean():.4f} SDR2 {100*(e<=2).mean():.1f} >10 {(e>10).sum()}")
