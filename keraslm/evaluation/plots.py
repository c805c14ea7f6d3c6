"""Evaluation plots as PNG files (matplotlib, "Agg" backend: no display needed).

- `plot_cumulative_error`: share of points within each error radius (the CPE curve).
- `plot_landmark_errors`: one box of point errors per landmark.
- `plot_reliability`: expected (calibrated) vs actual error per landmark.
- `plot_overlay`: an image with ground truth and predicted landmarks joined by lines. 2D images
  are shown as they are; 3D volumes as maximum intensity projections along z, y and x.

Points are given in physical mm and drawn in image index units `(x, y[, z])` through the
image's own geometry (`Image.physical_to_index`), so oblique images are shown unresampled.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keraslm.evaluation.metrics import SDR_RADII_MM  # noqa: E402
from keraslm.files import atomic_path  # noqa: E402

_TRUTH_STYLE = {"marker": "o", "s": 22, "facecolors": "none", "edgecolors": "lime", "linewidths": 1.2}
_PREDICTION_STYLE = {"marker": "x", "s": 22, "c": "red", "linewidths": 1.2}


def _save(figure, path):
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_cumulative_error(path, curves, radii=SDR_RADII_MM, title="Cumulative point error"):
    """Writes the cumulative error curve: % of points with error <= r, against r in mm.

    Args:
        path: str. PNG file.
        curves: dict of label -> array of errors in mm (NaN ignored).
        radii: sequence of float. Radii marked by dotted vertical lines.
        title: str.
    """
    figure, axes = plt.subplots(figsize=(6, 4))
    largest = 0.0
    for label, errors in curves.items():
        errors = np.sort(np.asarray(errors, dtype=np.float64).ravel())
        errors = errors[np.isfinite(errors)]
        if errors.size == 0:
            continue
        share = 100.0 * np.arange(1, errors.size + 1) / errors.size
        axes.step(np.concatenate([[0.0], errors]), np.concatenate([[0.0], share]), where="post",
                  label=f"{label} (n={errors.size})")
        largest = max(largest, float(np.percentile(errors, 99)))
    for radius in radii:
        axes.axvline(radius, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlim(0, max(largest * 1.05, max(radii, default=1.0) * 1.25))
    axes.set_ylim(0, 100)
    axes.set_xlabel("point error (mm)")
    axes.set_ylabel("points within error (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    _save(figure, path)


def plot_landmark_errors(path, errors_mm, landmark_names, title="Point error per landmark"):
    """Writes a box plot of the point errors of each landmark.

    Args:
        path: str. PNG file.
        errors_mm: array `(num_images, num_landmarks)`. NaN = not evaluated.
        landmark_names: sequence of str.
        title: str.
    """
    errors_mm = np.asarray(errors_mm, dtype=np.float64)
    columns = [column[np.isfinite(column)] for column in errors_mm.T]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.3 * len(columns) + 2), 4))
    axes.boxplot(columns, showfliers=True, flierprops={"markersize": 3})
    axes.set_xticks(range(1, len(columns) + 1))
    axes.set_xticklabels(landmark_names, rotation=90, fontsize=7)
    axes.set_ylabel("point error (mm)")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)


def plot_reliability(path, expected_mm, actual_mm, flag_mm=2.5, title="Expected vs actual error"):
    """Writes the reliability plot of expected errors: every point (expected, actual) and the
    mean actual error per bin of expected error, against the diagonal.

    Args:
        path: str. PNG file.
        expected_mm, actual_mm: arrays of the same shape (NaN ignored).
        flag_mm: float. The flagging threshold, drawn as a dotted line.
        title: str.
    """
    from keraslm.calibration import calibration_quality

    expected = np.asarray(expected_mm, np.float64).ravel()
    actual = np.asarray(actual_mm, np.float64).ravel()
    keep = np.isfinite(expected) & np.isfinite(actual)
    quality = calibration_quality(expected[keep], actual[keep], flag_mm=flag_mm, num_bins=10)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.scatter(expected[keep], actual[keep], s=4, alpha=0.3, color="grey", label="landmarks")
    bins = quality["bins"]
    axes.plot([b["expected_mm"] for b in bins], [b["actual_mm"] for b in bins], "o-",
              color="tab:blue", label="mean actual per bin of expected")
    top = 1.0  # Axes up to the 99th percentiles: a few far-off points would squeeze the rest.
    if keep.any():
        top = 1.1 * max(float(np.percentile(actual[keep], 99)),
                        float(np.percentile(expected[keep], 99)), flag_mm)
    axes.plot([0, top], [0, top], color="black", linewidth=0.8, label="expected = actual")
    axes.axvline(flag_mm, color="tab:red", linestyle=":", linewidth=0.8, label=f"flag > {flag_mm:g} mm")
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_xlabel("expected error (mm)")
    axes.set_ylabel("actual error (mm)")
    axes.set_title(f"{title}\nSpearman {quality['spearman']:.2f}, n={quality['num_points']}")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    _save(figure, path)


def _draw(axes, array, truth, predicted, spacing_rows, spacing_columns):
    """Shows a 2D array (rows, columns) with points given as (column, row) index pairs."""
    rows, columns = array.shape
    low, high = np.percentile(array, [0.5, 99.5]) if array.size else (0, 1)
    axes.imshow(array, cmap="gray", vmin=low, vmax=high if high > low else low + 1,
                extent=(-0.5, columns - 0.5, rows - 0.5, -0.5),
                aspect=spacing_rows / spacing_columns, interpolation="nearest")
    for (tx, ty), (px, py) in zip(truth, predicted):
        if np.isfinite([tx, ty, px, py]).all():
            axes.plot([tx, px], [ty, py], color="yellow", linewidth=0.8)
    axes.scatter(truth[:, 0], truth[:, 1], label="ground truth", **_TRUTH_STYLE)
    axes.scatter(predicted[:, 0], predicted[:, 1], label="prediction", **_PREDICTION_STYLE)
    axes.set_xlim(-0.5, columns - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])


def plot_overlay(path, image, truth_mm, predicted_mm, title=""):
    """Writes an image with ground truth (green circles) and predictions (red crosses) joined by
    yellow lines.

    Args:
        path: str. PNG file.
        image: keraslm.io.Image. 2D: shown as is; 3D: maximum intensity projections along
            z (x-y view), y (x-z view) and x (y-z view).
        truth_mm: array `(num_landmarks, ndim)`. Physical mm; NaN = missing (not drawn).
        predicted_mm: array `(num_landmarks, ndim)`. Physical mm.
        title: str.
    """
    truth = image.physical_to_index(np.asarray(truth_mm, dtype=np.float64))
    predicted = image.physical_to_index(np.asarray(predicted_mm, dtype=np.float64))
    array = np.asarray(image.array, dtype=np.float32)
    spacing = image.spacing
    if image.ndim == 2:
        figure, axes = plt.subplots(figsize=(6, 6 * array.shape[0] * spacing[1] / (array.shape[1] * spacing[0])))
        _draw(axes, array, truth, predicted, spacing[1], spacing[0])
        panels = [axes]
    else:
        figure, panels = plt.subplots(1, 3, figsize=(15, 5))
        # (projection axis of array[z, y, x], point coordinates shown as (column, row), spacings)
        views = ((0, (0, 1), "x-y (MIP along z)"), (1, (0, 2), "x-z (MIP along y)"),
                 (2, (1, 2), "y-z (MIP along x)"))
        for axes, (axis, (column, row), label) in zip(panels, views):
            _draw(axes, array.max(axis=axis), truth[:, [column, row]], predicted[:, [column, row]],
                  spacing[row], spacing[column])
            axes.set_title(label, fontsize=9)
    panels[0].legend(loc="lower right", fontsize=7, framealpha=0.6)
    figure.suptitle(title, fontsize=10)
    _save(figure, path)
