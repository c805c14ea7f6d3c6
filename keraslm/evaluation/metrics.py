"""Point errors and the summaries the paper and the field report (pure NumPy).

All points are `(x, y[, z])` in physical millimetres (LPS); errors are Euclidean distances in
mm, optionally rescaled per image so that a reference distance between two ground-truth
landmarks becomes `normalize_distance` (the paper's hand radiographs carry no pixel spacing,
so their errors are given for a wrist width of 50 mm between landmarks 1 and 5, zero-based).

Missing landmarks (NaN in the ground truth or the prediction) never count as an error of 0:
their error is NaN, they are left out of every statistic and counted separately
(`missing_ground_truth`, `missing_predictions`, `missing_reference`).

Conventions of the summaries: SD is the population SD (`np.std`, as the authors' code);
SDR at r mm = share of errors `<= r`; an outlier at r mm is an error `> r`, so
SDR + outlier share = 100 %; an error equal to r up to floating-point rounding counts within
(30 pixels of 0.1 mm are 3.0000000000000036 mm: ties are common between pixel annotations). Errors of several folds are pooled by concatenation
(`pool`), as the paper does for its cross-validation.
"""
import dataclasses

import numpy as np

from keraslm.errors import KeraslmError

SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)
OUTLIER_RADII_MM = (2.0, 4.0, 10.0)
OUTLIER_MM = 10.0


def sdr_key(radius):
    """str. Summary key of the success detection rate at `radius` mm, e.g. `sdr_2.0mm_percent`."""
    return f"sdr_{float(radius)}mm_percent"


def outlier_key(radius):
    """str. Summary key of the outlier count at `radius` mm, e.g. `outliers_10.0mm`."""
    return f"outliers_{float(radius)}mm"


@dataclasses.dataclass(frozen=True, eq=False)
class PointErrors:
    """Point errors of a set of images, with the reasons why some are absent.

    Args:
        ids: tuple of str. One id per image (may repeat when pooling repeated random splits).
        landmark_names: tuple of str.
        errors_mm: np.ndarray `(num_images, num_landmarks)`. Euclidean error in mm (normalised
            if `normalize_distance` was given); NaN where not evaluated.
        missing_ground_truth: np.ndarray bool `(num_images, num_landmarks)`.
        missing_prediction: np.ndarray bool `(num_images, num_landmarks)`. Ground truth
            present but no predicted point.
        missing_reference: np.ndarray bool `(num_images,)`. Normalisation asked for, but a
            reference landmark of this image is missing (all its errors are NaN).
        scale: np.ndarray `(num_images,)`. Factor applied to each image's raw errors (1 when
            not normalised).
        normalization: dict or None. `{"distance_mm": float, "landmarks": [int, int]}`.
    """

    ids: tuple
    landmark_names: tuple
    errors_mm: np.ndarray
    missing_ground_truth: np.ndarray
    missing_prediction: np.ndarray
    missing_reference: np.ndarray
    scale: np.ndarray
    normalization: dict = None

    @property
    def valid(self):
        """np.ndarray float: the evaluated errors, flattened."""
        return self.errors_mm[np.isfinite(self.errors_mm)]

    @property
    def num_images(self):
        """int."""
        return len(self.ids)

    def image_mean_mm(self):
        """np.ndarray `(num_images,)`: mean error per image (NaN where none was evaluated)."""
        counts = np.sum(np.isfinite(self.errors_mm), axis=1)
        totals = np.nansum(self.errors_mm, axis=1)
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)

    def worst_images(self, k):
        """list of int: indices of the `k` images with the largest mean error, worst first."""
        means = self.image_mean_mm()
        order = [i for i in np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable")
                 if np.isfinite(means[i])]
        return order[: max(0, int(k))]


def _check_points(points, name):
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] not in (2, 3):
        raise KeraslmError(
            f"`{name}` must have shape (num_images, num_landmarks, 2 or 3). "
            f"Received shape {points.shape}"
        )
    if np.any(np.isinf(points)):
        raise KeraslmError(f"`{name}` holds infinite coordinates; use NaN for missing landmarks")
    return points


def point_errors(predicted_mm, ground_truth_mm, ids=None, landmark_names=None,
                 normalize_distance=None, normalize_landmarks=(1, 5)):
    """Euclidean point errors in mm, per image and landmark.

    Args:
        predicted_mm: array `(num_images, num_landmarks, ndim)`. Physical mm; NaN = no prediction.
        ground_truth_mm: array of the same shape. Physical mm; NaN = missing landmark.
        ids: sequence of str, optional. Image ids; default "0", "1", ...
        landmark_names: sequence of str, optional. Default "landmark0", ...
        normalize_distance: float or None. If given, each image's errors are multiplied by
            `normalize_distance / |gt[a] - gt[b]|` for `(a, b) = normalize_landmarks`.
        normalize_landmarks: pair of int. Zero-based reference landmarks (the paper's hand
            data: 1 and 5, the wrist width).

    Returns:
        PointErrors.

    Raises:
        KeraslmError: shapes differ, a reference landmark index is out of range, or the
            normalisation distance is not positive; the message names the values.

    Examples:
        >>> e = point_errors([[[3.0, 4.0]]], [[[0.0, 0.0]]])
        >>> float(e.errors_mm[0, 0])
        5.0
    """
    predicted = _check_points(predicted_mm, "predicted_mm")
    truth = _check_points(ground_truth_mm, "ground_truth_mm")
    if predicted.shape != truth.shape:
        what = "landmarks" if predicted.shape[1] != truth.shape[1] else (
            "images" if predicted.shape[0] != truth.shape[0] else "coordinates per point")
        raise KeraslmError(
            f"predictions and ground truth differ in their number of {what}: predictions have "
            f"shape {predicted.shape}, ground truth {truth.shape} (images, landmarks, ndim)"
        )
    num_images, num_landmarks, _ = truth.shape
    ids = tuple(str(i) for i in (range(num_images) if ids is None else ids))
    names = tuple(landmark_names) if landmark_names is not None else tuple(
        f"landmark{i}" for i in range(num_landmarks))
    if len(ids) != num_images or len(names) != num_landmarks:
        raise KeraslmError(
            f"got {len(ids)} ids and {len(names)} landmark names for points of shape {truth.shape}"
        )
    missing_truth = np.any(np.isnan(truth), axis=-1)
    missing_prediction = np.any(np.isnan(predicted), axis=-1) & ~missing_truth
    raw = np.linalg.norm(predicted - truth, axis=-1)
    scale = np.ones(num_images)
    missing_reference = np.zeros(num_images, dtype=bool)
    normalization = None
    if normalize_distance is not None:
        if not np.isfinite(normalize_distance) or normalize_distance <= 0:
            raise KeraslmError(
                f"`normalize_distance` must be a positive number of mm. "
                f"Received: normalize_distance={normalize_distance!r}"
            )
        pair = tuple(int(i) for i in normalize_landmarks)
        if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= i < num_landmarks for i in pair):
            raise KeraslmError(
                f"`normalize_landmarks` must be two different zero-based landmark indices below "
                f"{num_landmarks}. Received: normalize_landmarks={tuple(normalize_landmarks)!r}"
            )
        reference = np.linalg.norm(truth[:, pair[0]] - truth[:, pair[1]], axis=-1)
        missing_reference = ~np.isfinite(reference) | (reference <= 0)
        scale = np.where(missing_reference, np.nan, float(normalize_distance) / np.where(
            missing_reference, 1.0, reference))
        normalization = {"distance_mm": float(normalize_distance), "landmarks": list(pair)}
    errors = raw * scale[:, np.newaxis]
    return PointErrors(ids, names, errors, missing_truth, missing_prediction, missing_reference,
                       scale, normalization)


def mean_position_points(mean_position_mm, num_images, ndim):
    """The mean-position baseline's predictions: every image's landmarks at their mean training
    positions, `(num_images, num_landmarks, ndim)` mm (NaN for a landmark without one).

    Args:
        mean_position_mm: sequence, per landmark an `ndim` point or None
            (`keraslm.spec.DetectorSpec.mean_position_mm`).
        num_images: int.
        ndim: int.

    Examples:
        >>> mean_position_points([(1.0, 2.0), None], 3, 2).shape
        (3, 2, 2)
    """
    means = np.array([[np.nan] * ndim if p is None else list(p) for p in mean_position_mm],
                     dtype=np.float64).reshape(len(mean_position_mm), ndim)
    return np.broadcast_to(means, (num_images, *means.shape)).copy()


def pool(parts):
    """Concatenates the errors of several folds or splits into one `PointErrors` (the paper's
    cross-validation summary: all test images pooled).

    Args:
        parts: sequence of PointErrors with the same landmark names and normalisation.

    Raises:
        KeraslmError: nothing to pool, or the parts disagree; the message names the part.
    """
    parts = list(parts)
    if not parts:
        raise KeraslmError("nothing to pool: no point errors were given")
    first = parts[0]
    for number, part in enumerate(parts[1:], 1):
        if part.landmark_names != first.landmark_names:
            raise KeraslmError(
                f"cannot pool part {number}: its {len(part.landmark_names)} landmarks "
                f"{list(part.landmark_names)[:3]}... differ from part 0's "
                f"{len(first.landmark_names)} {list(first.landmark_names)[:3]}..."
            )
        if part.normalization != first.normalization:
            raise KeraslmError(
                f"cannot pool part {number}: normalisation {part.normalization} differs from "
                f"part 0's {first.normalization}"
            )
    return PointErrors(
        tuple(i for part in parts for i in part.ids),
        first.landmark_names,
        *(np.concatenate([getattr(part, field) for part in parts]) for field in (
            "errors_mm", "missing_ground_truth", "missing_prediction", "missing_reference", "scale")),
        first.normalization,
    )


def _as_point_errors(errors):
    if isinstance(errors, PointErrors):
        return errors
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2:
        raise KeraslmError(
            f"errors must be PointErrors or an array (num_images, num_landmarks). "
            f"Received shape {errors.shape}"
        )
    missing = np.isnan(errors)
    return PointErrors(
        tuple(str(i) for i in range(errors.shape[0])),
        tuple(f"landmark{i}" for i in range(errors.shape[1])),
        errors, missing, np.zeros_like(missing), np.zeros(errors.shape[0], dtype=bool),
        np.ones(errors.shape[0]),
    )


def summarize(errors, outlier_mm=OUTLIER_MM, sdr_radii=SDR_RADII_MM, outlier_radii=OUTLIER_RADII_MM):
    """The paper's summary of point errors plus SDR and outlier counts.

    Args:
        errors: PointErrors, or an array `(num_images, num_landmarks)` of errors in mm with
            NaN where the ground truth is missing.
        outlier_mm: float. The paper's outlier radius (errors `> outlier_mm`).
        sdr_radii: sequence of float. Radii (mm) of the success detection rates.
        outlier_radii: sequence of float. Radii (mm) of the outlier counts.

    Returns:
        dict with `count` (evaluated points), `num_images`, `num_landmarks`,
        `missing_ground_truth`, `missing_predictions`, `missing_reference` (images), and, when
        `count > 0`: `median_mm`, `mean_mm`, `std_mm`, `max_mm`, `outliers` and
        `outlier_percent` (`> outlier_mm`), `sdr_<r>mm_percent` per SDR radius,
        `outliers_<r>mm` and `outliers_<r>mm_percent` per outlier radius. With `count == 0`
        those statistics are None.
    """
    errors = _as_point_errors(errors)
    valid = errors.valid
    count = int(valid.size)
    summary = {
        "count": count,
        "num_images": int(errors.num_images),
        "num_landmarks": len(errors.landmark_names),
        "missing_ground_truth": int(np.sum(errors.missing_ground_truth)),
        "missing_predictions": int(np.sum(errors.missing_prediction)),
        "missing_reference": int(np.sum(errors.missing_reference)),
    }
    if errors.normalization is not None:
        summary["normalization"] = errors.normalization

    def stat(function):
        return float(function(valid)) if count else None

    def percent(mask_count):
        return float(100.0 * mask_count / count) if count else None

    summary.update({
        "median_mm": stat(np.median),
        "mean_mm": stat(np.mean),
        "std_mm": stat(np.std),
        "max_mm": stat(np.max),
        "outliers": int(np.sum(_beyond(valid, outlier_mm))),
        "outlier_percent": percent(np.sum(_beyond(valid, outlier_mm))),
        "outlier_mm": float(outlier_mm),
    })
    for radius in sdr_radii:
        summary[sdr_key(radius)] = percent(np.sum(~_beyond(valid, radius)))
    for radius in outlier_radii:
        summary[outlier_key(radius)] = int(np.sum(_beyond(valid, radius)))
        summary[outlier_key(radius) + "_percent"] = percent(np.sum(_beyond(valid, radius)))
    return summary


def _beyond(errors_mm, radius_mm):
    """Errors farther than `radius_mm`, an error equal to it up to floating-point rounding
    counted within (30 pixels of 0.1 mm are 3.0000000000000036 mm)."""
    return errors_mm > radius_mm * (1 + 1e-9) + 1e-12


def per_landmark(errors, sdr_radius=2.0, outlier_mm=OUTLIER_MM):
    """One row of statistics per landmark.

    Args:
        errors: PointErrors or an array `(num_images, num_landmarks)` (NaN = missing).
        sdr_radius: float. Radius (mm) of the per-landmark SDR column.
        outlier_mm: float. Radius (mm) of the per-landmark outlier count.

    Returns:
        list of dict with `name`, `count`, `missing`, `mean_mm`, `std_mm`, `median_mm`,
        `max_mm`, `sdr_<r>mm_percent`, `outliers` (None statistics where `count == 0`).
    """
    errors = _as_point_errors(errors)
    rows = []
    for index, name in enumerate(errors.landmark_names):
        column = errors.errors_mm[:, index]
        valid = column[np.isfinite(column)]
        count = int(valid.size)

        def stat(function, values=valid, n=count):
            return float(function(values)) if n else None

        rows.append({
            "name": name,
            "count": count,
            "missing": int(column.size - count),
            "mean_mm": stat(np.mean),
            "std_mm": stat(np.std),
            "median_mm": stat(np.median),
            "max_mm": stat(np.max),
            sdr_key(sdr_radius): float(100.0 * np.mean(~_beyond(valid, sdr_radius))) if count else None,
            "outliers": int(np.sum(_beyond(valid, outlier_mm))),
        })
    return rows
