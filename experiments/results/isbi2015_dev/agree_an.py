import sys, numpy as np
from keraslm.calibration import (cross_fitted_blend, cross_fitted_expected_error, calibration_quality,
                                 spearman, _score_numpy)
folds = [int(f) for f in sys.argv[1].split(",")]
D = [np.load(f"/work/runs13/agree/fold{f}.npz") for f in folds]
cat = lambda k: np.concatenate([d[k] for d in D])
g, c, t = cat("g"), cat("c"), cat("t"); names = D[0]["names"]
b = cross_fitted_blend(g, c, t)
err = np.linalg.norm(b - t, axis=-1)
print("blended MRE", err.mean(), "SDR2", (err <= 2).mean())
dis = np.linalg.norm(g - c, axis=-1)
base = cross_fitted_expected_error(cat("cconf"), cat("cspread"), err, names)
q = calibration_quality(base, err); print("base", round(q["spearman"], 3), round(q["flagged_fraction"], 3), round(q["caught_fraction"], 3))
print("spearman dis vs err", spearman(dis, err), " per-landmark-normalised",
      spearman(dis / np.median(dis, 0), err / err.mean(0)))
# combined score: log(conf) - log(spread + .1) - beta * log(dis + d0): feed through the same fit by
# folding the disagreement into the confidence: conf' = conf * (dis + d0) ** -beta
for d0 in (0.5, 1.0, 2.0):
    for beta in (0.5, 1.0, 1.5, 2.0):
        conf2 = cat("cconf") * (dis + d0) ** -beta
        ex = cross_fitted_expected_error(conf2, cat("cspread"), err, names)
        q = calibration_quality(ex, err)
        print(f"d0 {d0} beta {beta}: spearman {q['spearman']:.3f} flagged {q['flagged_fraction']:.3f} caught {q['caught_fraction']:.3f}")
print("--- global-stage features")
gs = _score_numpy(cat("gconf"), cat("gspread")); cs = _score_numpy(cat("cconf"), cat("cspread"))
print("spearman -gscore", spearman(-gs, err), "-cscore", spearman(-cs, err))
big = err > 4
print("large errors", big.sum(), "dis of large: median", np.median(dis[big]), "others", np.median(dis[~big]))
for a in (0.25, 0.5, 1.0):
    conf2 = cat("cconf") * np.exp(a * gs)
    ex = cross_fitted_expected_error(conf2, cat("cspread"), err, names)
    q = calibration_quality(ex, err)
    print(f"+{a} gscore: spearman {q['spearman']:.3f} flagged {q['flagged_fraction']:.3f} caught {q['caught_fraction']:.3f}")
