"""Issue 13, session 12 (no training): does the shape of the local heatmap say more about the
error than its peak and spread? Features from `heatmap_collect.py`'s five folds, folded into
the calibration's score (`score - beta * log(feature + f0)`), calibrated per landmark
(isotonic, as shipped) and cross-fitted by fold; errors of the blended points."""
import numpy as np
from keraslm.calibration import (calibration_quality, cross_fitted_blend,
                                 cross_fitted_expected_error, spearman)
from keraslm.datasets.isbi2015 import ISBI2015_LANDMARKS as LANDMARK_NAMES

folds = [np.load(f"/work/runs13/heatmaps/fold{k}.npz") for k in range(5)]
ys, xs = np.mgrid[0:96, 0:96].astype(np.float32) * 0.4  # mm


def features(heat):
    """peak, spread (RMS distance of max(h - 0.1 peak, 0) from its centre of mass, mm),
    distance between the peak and that centre of mass (mm), mass share beyond 2 mm of the peak."""
    n, L = heat.shape[:2]
    h = heat.reshape(n * L, 96, 96).astype(np.float32)
    peak = h.max((1, 2))
    arg = h.reshape(n * L, -1).argmax(1)
    py, px = np.divmod(arg, 96)
    m = np.maximum(h - 0.1 * peak[:, None, None], 0)
    m /= np.maximum(m.sum((1, 2), keepdims=True), 1e-12)
    cx, cy = (m * xs).sum((1, 2)), (m * ys).sum((1, 2))
    spread = np.sqrt((m * ((xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2)).sum((1, 2)))
    offset = np.hypot(cx - 0.4 * px, cy - 0.4 * py)
    far = ((xs - 0.4 * px[:, None, None]) ** 2 + (ys - 0.4 * py[:, None, None]) ** 2) > 4.0
    share = (m * far).sum((1, 2))
    return [f.reshape(n, L) for f in (peak, spread, offset, share)]


groups = np.repeat(np.arange(5), [len(f["refined_mm"]) for f in folds])  # each image's fold
truth = np.concatenate([f["ground_truth_mm"] for f in folds])
errors = np.linalg.norm(cross_fitted_blend(np.concatenate([f["global_mm"] for f in folds]),
                                           np.concatenate([f["refined_mm"] for f in folds]),
                                           truth, groups=groups) - truth, axis=-1)
peak, spread, offset, share = (np.concatenate(a) for a in zip(*(features(f["heatmaps"]) for f in folds)))
for name, value in (("offset", offset), ("share", share)):
    print(f"{name} alone: Spearman {spearman(value.ravel(), errors.ravel()):.3f}")


def quality(extra, beta, f0):
    fake_spread = (spread + 0.1) * (extra + f0) ** beta - 0.1
    expected = cross_fitted_expected_error(peak, fake_spread, errors, LANDMARK_NAMES, groups=groups)
    q = calibration_quality(expected, errors)
    return q


base = calibration_quality(cross_fitted_expected_error(peak, spread, errors, LANDMARK_NAMES, groups=groups), errors)
print("peak + spread (as shipped):", {k: base[k] for k in base if not isinstance(base[k], (list, dict))})
for name, value in (("offset", offset), ("share", share)):
    for beta in (0.5, 1.0, 2.0):
        for f0 in (0.1, 0.5):
            q = quality(value, beta, f0)
            print(name, beta, f0, {k: q[k] for k in q if not isinstance(q[k], (list, dict))}, flush=True)
