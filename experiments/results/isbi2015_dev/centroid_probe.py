"""Issue 13, session 12 (no training): decode the local stage's heatmaps by a thresholded
centroid around the peak instead of the per-axis parabola, on the v4 configuration's held-out
heatmaps (`heatmap_collect.py`, 5 folds); blend weights cross-fitted over the folds.
For an ambiguous landmark (two contours, two modes) the centroid lies between the modes: the
point with the smaller expected error when the heatmap is the network's belief."""
import numpy as np
from keraslm.calibration import cross_fitted_blend

SPACING = 0.4  # mm per crop pixel (x and y)
folds = [np.load(f"/work/runs13/heatmaps/fold{k}.npz") for k in range(5)]
GROUPS = np.repeat(np.arange(5), [len(f["refined_mm"]) for f in folds])  # each image's fold
ys, xs = np.mgrid[0:96, 0:96].astype(np.float32)


def centroid(heat, threshold, radius):
    """(N, L, 96, 96) -> (N, L, 2) x, y: centroid of max(h - threshold * peak, 0) within
    `radius` px of the argmax."""
    n, L = heat.shape[:2]
    out = np.empty((n, L, 2), np.float32)
    for i in range(n):
        h = heat[i].astype(np.float32)  # (L, 96, 96)
        flat = h.reshape(L, -1)
        arg = flat.argmax(1)
        peak = flat.max(1)
        py, px = np.divmod(arg, 96)
        mask = (xs[None] - px[:, None, None]) ** 2 + (ys[None] - py[:, None, None]) ** 2 <= radius ** 2
        w = np.maximum(h - threshold * peak[:, None, None], 0) * mask
        s = w.sum((1, 2))
        out[i, :, 0] = (w * xs).sum((1, 2)) / s
        out[i, :, 1] = (w * ys).sum((1, 2)) / s
    return out


def refined_points(f, threshold, radius):
    if threshold is None:
        return f["refined_mm"]
    return f["refined_mm"] + SPACING * (centroid(f["heatmaps"], threshold, radius) - f["crop_points"])


def evaluate(threshold, radius):
    refined = [refined_points(f, threshold, radius) for f in folds]
    truth = np.concatenate([f["ground_truth_mm"] for f in folds])
    blended = cross_fitted_blend(np.concatenate([f["global_mm"] for f in folds]),
                                 np.concatenate(refined), truth, groups=GROUPS)
    return (np.linalg.norm(np.concatenate(refined) - truth, axis=-1),
            np.linalg.norm(blended - truth, axis=-1))


def line(e):
    return (f"MRE {e.mean():.3f} +- {e.std():.2f} median {np.median(e):.3f} SDR 2/2.5/3/4 "
            f"{100*(e<=2).mean():.1f}/{100*(e<=2.5).mean():.1f}/{100*(e<=3).mean():.1f}/"
            f"{100*(e<=4).mean():.1f} >10 {(e>10).sum()}")


results = {}
for threshold, radius in [(None, None)] + [(t, r) for t in (0.0, 0.25, 0.5) for r in (3, 6, 10, 15, 25)]:
    r_e, b_e = evaluate(threshold, radius)
    results[(threshold, radius)] = b_e
    print(f"threshold {threshold} radius {radius}: refined {line(r_e)} | blended {line(b_e)}", flush=True)
best = min(results, key=lambda k: results[k].mean())
print("per landmark, quadratic:", " ".join(f"{x:.2f}" for x in results[(None, None)].mean(0)))
print(f"per landmark, {best}:", " ".join(f"{x:.2f}" for x in results[best].mean(0)))
