"""Expected error per landmark: the heatmap's confidence and spread calibrated against errors
measured on held-out images.

Every prediction carries two uncertainty features of its last stage's heatmap: `confidence`
(the peak value) and `spread_mm` (`keraslm.ops.heatmaps.HeatmapCodec.spread`) - and a third of
its global stage's, `second_peak` (below). They combine into one score, higher = surer,

    score = log(max(confidence, 1e-3)) - log(spread_mm + 0.1)

and a calibration maps it to the error one should expect, in mm, for landmark k:

    expected_error_mm = landmark_scale[k] * g(score)

`g` is a decreasing (isotonic, pool-adjacent-violators) fit of held-out errors on the score,
pooled over all landmarks after dividing each error by its landmark's scale; `landmark_scale[k]`
is landmark k's mean held-out error over its mean `g` (the two are fitted alternately). `g` is
stored as knots (score) and values (mm), interpolated linearly and constant beyond the ends.
The calibration lives in a model's spec (`keraslm.spec.DetectorSpec.calibration`), so `keraslm.predict`,
the SavedModel signatures and TF Serving return `expected_error_mm` with every landmark.

Fit it on predictions of images the model did not train on (the held-out folds of a
cross-validation): `evaluate.py ... --calibrate calibration.json`, then
`keraslm-export ... --calibration calibration.json`.

The calibration of a coarse-to-fine model also says how to combine its two stages: the answer
for landmark k is

    point = local_weight[k] * refined + (1 - local_weight[k]) * global

(`blend_stages`), with `local_weight` (0, 0.1, ..., 1) chosen per landmark to minimise the mean
held-out error (`fit_local_weight`). Where the local stage is misled by a look-alike structure
(on ISBI 2015: orbitale, subspinale) the weight is low; where the two stages' errors are partly
independent, a mean of both beats either. A calibration without `local_weight` keeps the
refined point.

A calibration may also read a third feature, the global stage's `second_peak`
(`keraslm.ops.heatmaps.HeatmapCodec.second_peak`: the strongest response farther than two
target sigmas from the peak, over the peak; near 1 where a look-alike structure answers almost
as strongly, about 0.1-0.2 for one clean peak, by where it falls between pixels). With `second_peak_power` p in the calibration the
confidence is damped before the score,

    confidence x (1 - second_peak) ** p

so a point whose global heatmap has a runner-up elsewhere expects a larger error (fitted that
way too: `fit_calibration(..., second_peak=...)`). Every prediction graph returns the feature,
mean over the global stages.
"""
import json
import numbers
import os

import numpy as np
from keras import ops

from keraslm.errors import CalibrationError, KeraslmError

CALIBRATION_FORMAT = "keraslm-calibration-1"
_SPREAD_OFFSET_MM = 0.1
_MIN_CONFIDENCE = 1e-3
_ROUNDS = 3
#: `fit_shape_vote`'s defaults: the ridge penalty, and how many of a landmark's normal
#: variation (`scale_mm`) a point may lie from the other landmarks' vote before that raises its
#: expected error.
SHAPE_VOTE_RIDGE = 10.0
SHAPE_VOTE_MARGIN = 2.0
#: `fit_calibration`'s default power of the second-peak damping (chosen on ISBI 2015 fold 0 and
#: confirmed on fold 1: `experiments/isbi2015_flag.py`).
SECOND_PEAK_POWER = 2.0
#: The local-stage weights `fit_local_weight` chooses from.
LOCAL_WEIGHT_STEPS = np.linspace(0.0, 1.0, 11)


def calibration_score(confidence, spread_mm):
    """Score (higher = surer) of confidences and spreads of any matching shapes (keras.ops)."""
    confidence = ops.cast(ops.convert_to_tensor(confidence), "float32")
    spread_mm = ops.cast(ops.convert_to_tensor(spread_mm), "float32")
    return (ops.log(ops.maximum(confidence, _MIN_CONFIDENCE))
            - ops.log(ops.maximum(spread_mm, 0.0) + _SPREAD_OFFSET_MM))


def damped_confidence(confidence, second_peak, power):
    """`confidence x (1 - second_peak) ** power` (keras.ops; any matching shapes; a second peak
    outside [0, 1] is clipped into it)."""
    confidence = ops.cast(ops.convert_to_tensor(confidence), "float32")
    remaining = 1.0 - ops.clip(ops.cast(ops.convert_to_tensor(second_peak), "float32"), 0.0, 1.0)
    return confidence * ops.power(remaining, float(power))


def _damped_numpy(confidence, second_peak, power):
    remaining = 1.0 - np.clip(np.asarray(second_peak, np.float64), 0.0, 1.0)
    return np.asarray(confidence, np.float64) * remaining ** float(power)


def _score_numpy(confidence, spread_mm):
    confidence = np.asarray(confidence, np.float64)
    spread_mm = np.asarray(spread_mm, np.float64)
    return (np.log(np.maximum(confidence, _MIN_CONFIDENCE))
            - np.log(np.maximum(spread_mm, 0.0) + _SPREAD_OFFSET_MM))


def _isotonic_decreasing(x, y):
    """Pool-adjacent-violators: the decreasing step function of x closest to y (least squares).
    Returns (knots, values): each pooled block's mean x and fitted value, x ascending."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    means, weights, sums_x = [], [], []
    for xi, yi in zip(x, y):
        means.append(yi)
        weights.append(1.0)
        sums_x.append(xi)
        while len(means) > 1 and means[-2] < means[-1]:  # decreasing: a later block may not exceed
            mean, weight, sum_x = means.pop(), weights.pop(), sums_x.pop()
            means[-1] = (means[-1] * weights[-1] + mean * weight) / (weights[-1] + weight)
            weights[-1] += weight
            sums_x[-1] += sum_x
    knots = np.asarray(sums_x) / np.asarray(weights)
    return knots, np.asarray(means)


def _thin(knots, values, max_knots):
    """At most `max_knots` knots, keeping both ends (values stay decreasing)."""
    if len(knots) <= max_knots:
        return knots, values
    keep = np.unique(np.round(np.linspace(0, len(knots) - 1, max_knots)).astype(int))
    return knots[keep], values[keep]


def _interp(knots, values, score):
    return np.interp(score, knots, values) if len(knots) > 1 else np.full_like(score, values[0])


def fit_calibration(confidence, spread_mm, errors_mm, landmark_names, source=None, max_knots=48,
                    second_peak=None, second_peak_power=SECOND_PEAK_POWER):
    """Fits a calibration (see the module docstring) to held-out predictions.

    Args:
        confidence, spread_mm, errors_mm: arrays `(num_images, num_landmarks)`: the predictions'
            confidence and spread and their actual point errors in mm. Entries where any of the
            three is not finite (e.g. a missing ground-truth landmark) are left out.
        landmark_names: sequence of str, one per landmark.
        source: str, optional. What the calibration was fitted on (kept in the result).
        max_knots: int >= 2. Knots kept of the isotonic fit.
        second_peak: array like `confidence`, or None. The predictions' global second peak
            (the prediction graph's `second_peak`): the confidence is damped by it
            (`damped_confidence`) and the calibration records `second_peak_power`, so that
            `expected_error_mm` damps the same way.
        second_peak_power: float >= 0. The damping's power (with `second_peak`; 0: no damping,
            and the calibration does not record it).

    Returns:
        dict, JSON-serialisable: format, knots, values, landmark_scale, landmark_names, the
        number of points fitted, `source` and, with `second_peak`, `second_peak_power`.

    Raises:
        KeraslmError: shapes do not match, or a landmark has no usable point.
    """
    confidence, spread_mm, errors_mm = (np.asarray(a, np.float64)
                                        for a in (confidence, spread_mm, errors_mm))
    names = [str(name) for name in landmark_names]
    if not (confidence.shape == spread_mm.shape == errors_mm.shape and confidence.ndim == 2
            and confidence.shape[1] == len(names)):
        raise KeraslmError(
            "confidence, spread_mm and errors_mm must have the same shape (num_images, "
            f"num_landmarks={len(names)}). Received: {confidence.shape}, {spread_mm.shape}, "
            f"{errors_mm.shape}")
    if second_peak is not None:
        second_peak = np.asarray(second_peak, np.float64)
        if second_peak.shape != confidence.shape:
            raise KeraslmError(f"second_peak must have the confidence's shape {confidence.shape}. "
                               f"Received: {second_peak.shape}")
        if not (isinstance(second_peak_power, numbers.Real) and np.isfinite(second_peak_power)
                and second_peak_power >= 0):
            raise KeraslmError("second_peak_power must be a finite number >= 0. Received: "
                               f"{second_peak_power!r}")
        if second_peak_power == 0:
            second_peak = None
        else:
            confidence = _damped_numpy(confidence, second_peak, second_peak_power)
    score = _score_numpy(confidence, spread_mm)
    usable = np.isfinite(score) & np.isfinite(errors_mm)
    empty = [name for name, count in zip(names, usable.sum(0)) if count == 0]
    if empty:
        raise KeraslmError(f"no held-out point with an error to calibrate landmark(s) {', '.join(empty)}")
    scale = np.ones(len(names))
    for _ in range(_ROUNDS):
        knots, values = _isotonic_decreasing(score[usable], (errors_mm / scale)[usable])
        fitted = np.where(usable, _interp(knots, values, np.where(usable, score, 0.0)), np.nan)
        scale = (np.nansum(np.where(usable, errors_mm, np.nan), 0)
                 / np.maximum(np.nansum(fitted, 0), 1e-9))
    knots, values = _thin(knots, values, max_knots)
    calibration = {
        "format": CALIBRATION_FORMAT,
        "score": "log(max(confidence, 1e-3)) - log(spread_mm + 0.1)",
        "knots": [float(k) for k in knots],
        "values": [float(v) for v in values],
        "landmark_scale": [float(s) for s in scale],
        "landmark_names": names,
        "num_points": int(usable.sum()),
        "source": source,
    }
    if second_peak is not None:
        calibration["score"] = ("log(max(confidence x (1 - second_peak) ** second_peak_power, "
                                "1e-3)) - log(spread_mm + 0.1)")
        calibration["second_peak_power"] = float(second_peak_power)
    return calibration


def read_calibration(path):
    """Reads a calibration JSON file (`keraslm-evaluate --calibrate`) and checks its own
    consistency (`check_calibration` against its own landmark names).

    Raises:
        CalibrationError: the file is missing, a folder, not UTF-8 JSON, or malformed; the
            message names it.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            calibration = json.load(handle)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration file") from None
    except IsADirectoryError:
        raise CalibrationError(f"{path} is a folder; give the calibration's .json file") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CalibrationError(f"{path}: not a readable calibration JSON file ({error})") from None
    names = calibration.get("landmark_names") if isinstance(calibration, dict) else None
    try:
        check_calibration(calibration, names if isinstance(names, list) else [])
    except KeraslmError as error:
        raise CalibrationError(f"{path}: {error}") from None
    return calibration


def name_difference(found, expected, other="the model"):
    """A short description of how landmark names `found` differ from `expected` (`other`'s):
    the counts, the first position of the same names in another order, or names only on one
    side (up to three each)."""
    found, expected = [str(n) for n in found], [str(n) for n in expected]
    if len(found) != len(expected):
        return f"{len(found)} landmarks, {other} has {len(expected)}"
    if sorted(found) == sorted(expected):
        first = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
        return (f"the same landmarks in another order (position {first}: {found[first]!r}, "
                f"{other}'s {expected[first]!r})")
    only = [n for n in found if n not in expected]
    missing = [n for n in expected if n not in found]
    return (f"landmarks {', '.join(map(repr, only[:3]))} that {other} does not have, and not "
            f"its {', '.join(map(repr, missing[:3]))}")


def stage_counts(spec):
    """dict `{"global": n, "local": m}`: the stage structure of a `keraslm.spec.DetectorSpec`
    (ensemble members per stage), as a calibration records what it was fitted on."""
    return {"global": len(spec.global_stages), "local": len(spec.local_stages)}


def check_calibration(calibration, landmark_names, stages=None):
    """Raises CalibrationError unless `calibration` is a well-formed calibration for these
    landmarks and, when both are known, fitted on this stage structure (`stages`, as
    `stage_counts` gives it; the calibration's "stages"): a calibration fitted on one global
    model reads an ensemble's averaged or a local stage's confidence as if it were that
    model's."""
    try:
        _check_calibration(calibration, landmark_names)
    except CalibrationError:
        raise
    except KeraslmError as error:
        raise CalibrationError(str(error)) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise CalibrationError(f"the calibration is malformed ({type(error).__name__}: {error})") from None
    recorded = calibration.get("stages")
    if stages is not None and recorded is not None and dict(recorded) != dict(stages):
        raise CalibrationError(
            f"the calibration was fitted on a model of {recorded.get('global')} global and "
            f"{recorded.get('local')} local stage(s), this one has {stages['global']} and "
            f"{stages['local']}: fit one on this model's held-out predictions "
            "(keraslm-evaluate --calibrate)")


def _check_calibration(calibration, landmark_names):
    if not isinstance(calibration, dict) or calibration.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"not a keraslm calibration (expected format {CALIBRATION_FORMAT!r})")
    names = [str(name) for name in landmark_names]
    found = calibration.get("landmark_names", [])
    if not isinstance(found, list) or not all(isinstance(n, str) for n in found):
        raise CalibrationError("the calibration's landmark_names must be a list of names")
    if found != names:
        raise CalibrationError(f"the calibration is for other landmarks: "
                               f"{name_difference(found, names)}")
    knots, values = calibration.get("knots", []), calibration.get("values", [])
    scale = calibration.get("landmark_scale", [])
    if (len(knots) < 1 or len(knots) != len(values) or len(scale) != len(names)
            or not np.all(np.isfinite(np.asarray(knots + values + scale, np.float64)))
            or np.any(np.diff(knots) < 0)):
        raise KeraslmError("the calibration's knots, values and landmark_scale are malformed")
    vote = calibration.get("shape_vote")
    if vote is not None:
        _check_shape_vote(vote, len(names))
    power = calibration.get("second_peak_power")
    if power is not None and not (isinstance(power, (int, float)) and np.isfinite(power)
                                  and power >= 0):
        raise KeraslmError(f"the calibration's second_peak_power must be a number >= 0. "
                           f"Received: {power!r}")
    weight = calibration.get("local_weight")
    if weight is not None and (
            len(weight) != len(names) or not np.all(np.isfinite(np.asarray(weight, np.float64)))
            or np.any(np.asarray(weight, np.float64) < 0) or np.any(np.asarray(weight, np.float64) > 1)):
        raise KeraslmError(
            f"the calibration's local_weight must hold one weight in [0, 1] per landmark "
            f"({len(names)}). Received: {weight}")


def _check_shape_vote(vote, num_landmarks):
    try:
        y_mean = np.asarray(vote["y_mean"], np.float64)
        ndim = y_mean.shape[1]
        features = (num_landmarks - 1) * ndim
        shapes = {"y_mean": (num_landmarks, ndim), "x_mean": (num_landmarks, features),
                  "weights": (num_landmarks, features, ndim), "scale_mm": (num_landmarks,)}
        good = all(np.asarray(vote[key], np.float64).shape == shape
                   and np.all(np.isfinite(np.asarray(vote[key], np.float64)))
                   for key, shape in shapes.items())
        good = good and np.isfinite(float(vote["margin"])) and float(vote["margin"]) >= 0
    except (KeyError, TypeError, ValueError, IndexError):
        good = False
    if not good:
        raise KeraslmError(f"the calibration's shape_vote is malformed (expected x_mean, y_mean, "
                           f"weights, scale_mm for {num_landmarks} landmarks and a margin >= 0; "
                           "keraslm.calibration.fit_shape_vote)")


def fit_local_weight(global_mm, refined_mm, ground_truth_mm):
    """Per landmark, the weight of the refined point in `blend_stages` (one of
    `LOCAL_WEIGHT_STEPS`) with the smallest mean error on these held-out predictions; ties go
    to the larger weight.

    Args:
        global_mm, refined_mm, ground_truth_mm: arrays `(num_images, num_landmarks, ndim)`, the
            two stages' predictions and the truth in mm. Images without a finite truth for a
            landmark are left out of its fit.

    Returns:
        np.ndarray `(num_landmarks,)` float64.

    Raises:
        KeraslmError: shapes differ, or a landmark has no usable point.
    """
    global_mm, refined_mm, ground_truth_mm = (np.asarray(a, np.float64)
                                              for a in (global_mm, refined_mm, ground_truth_mm))
    if not (global_mm.shape == refined_mm.shape == ground_truth_mm.shape and global_mm.ndim == 3):
        raise KeraslmError(
            "global_mm, refined_mm and ground_truth_mm must have the same shape (num_images, "
            f"num_landmarks, ndim). Received: {global_mm.shape}, {refined_mm.shape}, "
            f"{ground_truth_mm.shape}")
    usable = np.all(np.isfinite(global_mm) & np.isfinite(refined_mm) & np.isfinite(ground_truth_mm), -1)
    if not np.all(usable.any(0)):
        raise KeraslmError(f"no held-out point to fit the local weight of landmark(s) "
                           f"{np.flatnonzero(~usable.any(0)).tolist()}")
    mean_errors = np.stack([
        np.nanmean(np.where(usable, np.linalg.norm(
            np.asarray(blend_stages(global_mm, refined_mm, weight)) - ground_truth_mm, axis=-1),
            np.nan), axis=0)
        for weight in LOCAL_WEIGHT_STEPS])
    # argmin over the reversed steps: of equal means, the larger weight (the refined point).
    return LOCAL_WEIGHT_STEPS[::-1][np.argmin(mean_errors[::-1], axis=0)]


def fit_mirror_threshold(upright_confidence, mirrored_confidence):
    """The confidence threshold of a mirror check (`keraslm.spec.MirrorCheck`) from the mean
    landmark confidences of the global stage(s) on held-out images as they are
    (`upright_confidence`, `(num_images,)`) and mirrored (`mirrored_confidence`): halfway between the highest mirrored and the lowest
    upright confidence when they separate, else just above the highest mirrored one (every
    mirrored image is then tried again; so are the upright ones below it, which costs time,
    not accuracy: the surer answer is kept)."""
    upright = np.asarray(upright_confidence, np.float64)
    mirrored = np.asarray(mirrored_confidence, np.float64)
    if not (upright.size and mirrored.size):
        raise KeraslmError("fitting a mirror check needs confidences of upright and mirrored "
                           "images")
    highest, lowest = float(mirrored.max()), float(upright.min())
    return (highest + lowest) / 2.0 if lowest > highest else float(np.nextafter(highest, np.inf))


def blend_stages(global_points, refined_points, local_weight):
    """`local_weight * refined + (1 - local_weight) * global`, per landmark (keras.ops; runs in
    the prediction graph and on NumPy arrays). Points `(..., num_landmarks, ndim)` in any
    coordinate space the two share; `local_weight` a scalar or `(num_landmarks,)`."""
    weight = ops.cast(ops.convert_to_tensor(np.asarray(local_weight, np.float64)),
                      global_points.dtype if hasattr(global_points, "dtype") else "float64")
    if len(weight.shape):
        weight = weight[:, None]
    return global_points + weight * (refined_points - global_points)


def _held_out_groups(num_images, num_folds, what, groups=None):
    """Cross-fitting: boolean masks `(num_images,)` of the held-out images of each round - one
    round per distinct label of `groups` (e.g. each image's cross-validation fold), or images
    split into `num_folds` groups by position. An image that occurs under two labels (repeated
    random splits) is seen by the fit of the other's round."""
    if num_images < 2:
        raise KeraslmError(f"cross-fitting {what} needs at least 2 images")
    if groups is None:
        groups = np.arange(num_images) % min(num_folds, num_images)
    groups = np.asarray(groups)
    if groups.shape != (num_images,):
        raise KeraslmError(f"cross-fitting {what}: one group label per image ({num_images}) is "
                           f"needed. Received: groups of shape {groups.shape}")
    if len(np.unique(groups)) < 2:
        raise KeraslmError(f"cross-fitting {what} needs at least 2 groups of images. "
                           f"Received: only group {groups[0].item()!r}")
    return [groups == group for group in np.unique(groups)]


def cross_fitted_blend(global_mm, refined_mm, ground_truth_mm, num_folds=5, groups=None):
    """Blended points of every image with local weights fitted WITHOUT it: the honest measure of
    weights fitted on all of them. Rounds as in `cross_fitted_expected_error`: one per label of
    `groups` `(num_images,)` (e.g. each image's cross-validation fold: weights fitted on the
    other folds), or `num_folds` groups of images by position. Returns `(num_images,
    num_landmarks, ndim)` mm."""
    global_mm, refined_mm, ground_truth_mm = (np.asarray(a, np.float64)
                                              for a in (global_mm, refined_mm, ground_truth_mm))
    blended = np.full(global_mm.shape, np.nan)
    for test in _held_out_groups(global_mm.shape[0], num_folds, "the local weights", groups):
        weight = fit_local_weight(global_mm[~test], refined_mm[~test], ground_truth_mm[~test])
        blended[test] = np.asarray(blend_stages(global_mm[test], refined_mm[test], weight))
    return blended


def _others(num_landmarks):
    """`(L, L-1)` int: row k lists every landmark but k."""
    return np.array([[j for j in range(num_landmarks) if j != k] for k in range(num_landmarks)])


def _vote_features(points, others):
    """Per landmark k: the other landmarks relative to their centroid, flattened
    `(N, L, (L-1)*ndim)`, and that centroid `(N, L, ndim)` (NumPy)."""
    gathered = points[:, others]  # (N, L, L-1, ndim)
    centroid = gathered.mean(axis=2)
    relative = gathered - centroid[:, :, None]
    return relative.reshape(points.shape[0], others.shape[0], -1), centroid


def fit_shape_vote(points_mm, landmark_names, ridge=SHAPE_VOTE_RIDGE, margin=SHAPE_VOTE_MARGIN,
                   num_folds=5):
    """The other landmarks' vote for each landmark, from annotated shapes (the training labels):
    per landmark k a ridge regression of its position, relative to the centroid of the other
    landmarks, on those landmarks' positions relative to the same centroid. A predicted point
    far from its vote - further than its landmark's shapes vary - is a point the rest of the
    landmarks place elsewhere: `expected_error_mm` raises its expected error to the distance
    beyond `margin` times that variation.

    Args:
        points_mm: array `(num_shapes, num_landmarks, ndim)`, physical mm. Shapes with a
            non-finite coordinate are left out.
        landmark_names: sequence of str.
        ridge: float > 0. The regression's ridge penalty (mm^2 scale of the centred features).
        margin: float >= 0. How many of a landmark's `scale_mm` a residual may reach before it
            raises the expected error.
        num_folds: int >= 2. `scale_mm` is the root mean square residual of shapes held out of
            the fit, over this many folds (the in-sample residual is too small).

    Returns:
        dict (JSON-serialisable), the calibration's "shape_vote" entry: `x_mean`
        `(L, (L-1)*ndim)`, `y_mean` `(L, ndim)`, `weights` `(L, (L-1)*ndim, ndim)`, `scale_mm`
        `(L,)`, `margin`, `ridge`, `num_shapes`.

    Raises:
        KeraslmError: num_folds or fewer complete shapes, fewer than 3 landmarks, or
            shapes that do not match the names.
    """
    points = np.asarray(points_mm, np.float64)
    names = [str(name) for name in landmark_names]
    if points.ndim != 3 or points.shape[1] != len(names) or len(names) < 3:
        raise KeraslmError(f"fitting a shape vote needs shapes (num_shapes, {len(names)} >= 3 "
                           f"landmarks, ndim). Received: {points.shape}")
    points = points[np.all(np.isfinite(points), axis=(1, 2))]
    if len(points) <= num_folds:
        raise KeraslmError(f"fitting a shape vote needs at least {num_folds + 1} complete "
                           f"shapes; {len(points)} given")
    others = _others(len(names))

    def fit(shapes):
        features, centroid = _vote_features(shapes, others)
        target = shapes - centroid  # (N, L, ndim)
        x_mean, y_mean = features.mean(0), target.mean(0)
        weights = []
        for k in range(len(names)):
            x = features[:, k] - x_mean[k]
            weights.append(np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]),
                                           x.T @ (target[:, k] - y_mean[k])))
        return x_mean, y_mean, np.stack(weights)

    residuals = []
    for fold in range(num_folds):
        held = np.arange(len(points)) % num_folds == fold
        residuals.append(_vote_residual_numpy(fit(points[~held]), points[held], others))
    scale = np.sqrt(np.mean(np.concatenate(residuals) ** 2, axis=0))
    x_mean, y_mean, weights = fit(points)
    return {"x_mean": x_mean.tolist(), "y_mean": y_mean.tolist(), "weights": weights.tolist(),
            "scale_mm": scale.tolist(), "margin": float(margin), "ridge": float(ridge),
            "num_shapes": int(len(points))}


def _vote_residual_numpy(fitted, points, others):
    x_mean, y_mean, weights = fitted
    features, centroid = _vote_features(points, others)
    vote = centroid + y_mean + np.einsum("nlf,lfd->nld", features - x_mean, weights)
    return np.linalg.norm(points - vote, axis=-1)


def shape_vote_residual_mm(shape_vote, points_mm, mirror_axis=None):
    """Each point's distance in mm from the other landmarks' vote (`fit_shape_vote`), points
    `(..., num_landmarks, ndim)` physical mm (keras.ops; runs in the prediction graph). With
    `mirror_axis` (0 = x, ...), the smaller of the shape's and its mirror image's residual
    (a subject facing the other way). A shape with a non-finite point gets NaN throughout."""
    y_mean = np.asarray(shape_vote["y_mean"], np.float64)
    num_landmarks, ndim = y_mean.shape
    # The features unflattened (other landmark, axis), so that no tensor is reshaped: any
    # leading dimensions, known or not.
    x_mean = np.asarray(shape_vote["x_mean"], np.float64).reshape(num_landmarks, -1, ndim)
    weights = np.asarray(shape_vote["weights"], np.float64).reshape(
        num_landmarks, num_landmarks - 1, ndim, ndim)
    others = _others(num_landmarks)
    points = ops.cast(ops.convert_to_tensor(points_mm), "float64")

    def residual(shape):
        gathered = ops.take(shape, others, axis=-2)  # (..., L, L-1, ndim)
        centroid = ops.mean(gathered, axis=-2)
        relative = gathered - centroid[..., None, :] - x_mean
        vote = centroid + y_mean + ops.einsum("...lje,ljed->...ld", relative, weights)
        return ops.sqrt(ops.sum(ops.square(shape - vote), axis=-1))

    found = residual(points)
    if mirror_axis is not None:
        flip = np.ones(ndim)
        flip[mirror_axis] = -1.0
        found = ops.minimum(found, residual(points * flip))
    return found


def expected_error_mm(calibration, confidence, spread_mm, points_mm=None, mirror_axis=None,
                      second_peak=None):
    """Expected error in mm `(..., num_landmarks)` of predictions with these confidences and
    spreads (keras.ops; runs in the prediction graph). A calibration with `second_peak_power`
    also takes the global second peak (`second_peak`, like `confidence`) and damps the
    confidence by it (`damped_confidence`). A calibration with a "shape_vote"
    (`fit_shape_vote`) also takes the points (`points_mm`, physical mm): a point further from
    the other landmarks' vote than `margin` times its landmark's `scale_mm` expects at least
    the distance beyond that (`mirror_axis`: see `shape_vote_residual_mm`)."""
    power = calibration.get("second_peak_power")
    if power is not None:
        if second_peak is None:
            raise KeraslmError("this calibration damps the confidence by the global second peak "
                               "(second_peak_power): expected_error_mm needs second_peak")
        confidence = damped_confidence(confidence, second_peak, power)
    heatmap = _heatmap_expected_error_mm(calibration, confidence, spread_mm)
    vote = calibration.get("shape_vote")
    if vote is None:
        return heatmap
    if points_mm is None:
        raise KeraslmError("this calibration has a shape vote: expected_error_mm needs the "
                           "points (points_mm)")
    beyond = ops.cast(shape_vote_residual_mm(vote, points_mm, mirror_axis)
                      - vote["margin"] * np.asarray(vote["scale_mm"], np.float64), heatmap.dtype)
    # A shape with a missing (non-finite) point has no vote: the heatmap's estimate stands.
    return ops.where(ops.isfinite(beyond), ops.maximum(heatmap, beyond), heatmap)


def _heatmap_expected_error_mm(calibration, confidence, spread_mm):
    score = calibration_score(confidence, spread_mm)
    knots = np.asarray(calibration["knots"], np.float32)
    values = np.asarray(calibration["values"], np.float32)
    scale = np.asarray(calibration["landmark_scale"], np.float32)
    if len(knots) == 1:
        return ops.ones_like(score) * values[0] * scale
    # Linear interpolation between knots, constant beyond the ends.
    clipped = ops.clip(score, float(knots[0]), float(knots[-1]))
    upper = ops.clip(ops.sum(ops.cast(clipped[..., None] > knots, "int32"), axis=-1),
                     1, len(knots) - 1)
    x0, x1 = ops.take(knots, upper - 1), ops.take(knots, upper)
    y0, y1 = ops.take(values, upper - 1), ops.take(values, upper)
    weight = ops.where(x1 > x0, (clipped - x0) / ops.maximum(x1 - x0, 1e-12), 0.0)
    return (y0 + weight * (y1 - y0)) * scale


def _rank(values):
    """Ranks 0..n-1; ties get their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    return ((end - counts + end - 1) / 2.0)[inverse]


def spearman(a, b):
    """Spearman rank correlation of two 1D arrays (ties get their average rank)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return float("nan")
    return float(np.corrcoef(_rank(a), _rank(b))[0, 1])


def calibration_quality(expected_mm, actual_mm, flag_mm=2.5, large_mm=4.0, num_bins=8):
    """How well expected errors tell which landmarks to check, on held-out points.

    Args:
        expected_mm, actual_mm: arrays of the same shape (NaN entries are left out).
        flag_mm: float. Landmarks with expected error above it are flagged for checking.
        large_mm: float. An actual error above it is one a flag should catch.
        num_bins: int. Bins (equal counts of expected error) of the reliability table.

    Returns:
        dict: spearman, flagged_fraction, caught_fraction (flagged among the errors >
        large_mm), num_large, num_points, mean_expected_mm, mean_actual_mm, and `bins`: one
        dict per bin with mean expected, mean actual and count (the reliability plot).
    """
    expected = np.asarray(expected_mm, np.float64).ravel()
    actual = np.asarray(actual_mm, np.float64).ravel()
    keep = np.isfinite(expected) & np.isfinite(actual)
    expected, actual = expected[keep], actual[keep]
    flagged = expected > flag_mm
    large = actual > large_mm
    bins = []
    if expected.size:
        order = np.argsort(expected, kind="stable")
        for chunk in np.array_split(order, min(num_bins, expected.size)):
            bins.append({"expected_mm": float(expected[chunk].mean()),
                         "actual_mm": float(actual[chunk].mean()), "count": int(chunk.size)})
    return {
        "spearman": spearman(expected, actual),
        "flag_mm": flag_mm,
        "large_mm": large_mm,
        "flagged_fraction": float(flagged.mean()) if expected.size else float("nan"),
        "caught_fraction": float((flagged & large).sum() / large.sum()) if large.any() else float("nan"),
        "num_large": int(large.sum()),
        "num_points": int(expected.size),
        "mean_expected_mm": float(expected.mean()) if expected.size else float("nan"),
        "mean_actual_mm": float(actual.mean()) if expected.size else float("nan"),
        "bins": bins,
    }


def cross_fitted_expected_error(confidence, spread_mm, errors_mm, landmark_names, num_folds=5,
                                groups=None, points_mm=None, shapes_mm=None,
                                shape_vote_margin=None, second_peak=None,
                                second_peak_power=SECOND_PEAK_POWER):
    """Expected errors of every point from calibrations fitted WITHOUT its image: an honest
    measure of a calibration fitted on all of them. One round per label of `groups`
    `(num_images,)` (e.g. each image's cross-validation fold), or `num_folds` groups of images
    by position. With `second_peak` (like `confidence`) each round's calibration damps the
    confidence by it (`fit_calibration`). With `shape_vote_margin`, each round's calibration
    also holds a shape vote fitted on the annotated shapes `shapes_mm` `(num_images,
    num_landmarks, ndim)` of the other rounds' images (in k-fold cross-validation: the round's
    training images), applied to the predicted points `points_mm` of the same shape. Returns
    `(num_images, num_landmarks)` mm."""
    confidence, spread_mm, errors_mm = (np.asarray(a, np.float64)
                                        for a in (confidence, spread_mm, errors_mm))
    peak = None if second_peak is None else np.asarray(second_peak, np.float64)
    expected = np.full(confidence.shape, np.nan)
    for test in _held_out_groups(confidence.shape[0], num_folds, "a calibration", groups):
        calibration = fit_calibration(confidence[~test], spread_mm[~test], errors_mm[~test],
                                      landmark_names,
                                      second_peak=None if peak is None else peak[~test],
                                      second_peak_power=second_peak_power)
        points = None
        if shape_vote_margin is not None:
            calibration["shape_vote"] = fit_shape_vote(np.asarray(shapes_mm)[~test],
                                                       landmark_names, margin=shape_vote_margin)
            points = np.asarray(points_mm)[test]
        expected[test] = np.asarray(expected_error_mm(
            calibration, confidence[test], spread_mm[test], points,
            second_peak=None if peak is None else peak[test]))
    return expected
