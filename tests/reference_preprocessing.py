"""NumPy reference implementations of keraslm.preprocessing (the host-side code keraslm used
before the preprocessing moved into TF ops), kept only to check the TF implementation against.

Not used by keraslm itself.
"""
import numpy as np

NORMALIZATIONS = ("equalize_standardize", "standardize", "subtract_mean", "none")


def _box_prefilter(array, widths):
    """Separable centred moving average of odd `widths` (array axis order), edges replicated."""
    for axis, width in enumerate(widths):
        if width <= 1:
            continue
        half = width // 2
        padding = [(0, 0)] * array.ndim
        padding[axis] = (half + 1, half)
        cumulative = np.cumsum(np.pad(array, padding, mode="edge"), axis=axis, dtype=np.float64)
        length = array.shape[axis]
        upper = np.take(cumulative, np.arange(width, width + length), axis=axis)
        lower = np.take(cumulative, np.arange(0, length), axis=axis)
        array = ((upper - lower) / width).astype(np.float32)
    return array


def resample_to_grid(array, placement, grid, fill_value=0.0):
    """Resamples an image array onto the grid with (bi/tri)linear interpolation.

    Where the grid is coarser than the image, the image is first averaged over centred boxes
    about the scale factor wide (odd widths, anti-aliasing). Outside the image the grid gets
    `fill_value`. The placement is axis-aligned, so interpolation is separable: one array
    axis at a time.

    Args:
        array: np.ndarray. Image array `[y, x]` / `[z, y, x]`.
        placement: GridPlacement.
        grid: GridSpec.
        fill_value: float.

    Returns:
        np.ndarray float32 of shape `grid.shape`.
    """
    scale_xyz = np.diag(placement.grid_to_image)[:-1]
    widths = [2 * int(np.floor(s / 2 * (1 + 1e-6))) + 1 for s in reversed(scale_xyz)]
    result = _box_prefilter(np.asarray(array, np.float32), widths)
    inside_weight = np.ones((1,) * grid.ndim, np.float32)
    for d, grid_size in enumerate(grid.size):  # d: point axis x, y[, z].
        axis = grid.ndim - 1 - d  # The matching array axis.
        image_size = result.shape[axis]
        coordinate = placement.grid_to_image[d, d] * np.arange(grid_size) + placement.grid_to_image[d, -1]
        low = np.floor(coordinate).astype(np.int64)
        fraction = (coordinate - low).astype(np.float32)
        # Neighbours outside the image get weight 0 (constant fill below).
        weight_low = np.where((low >= 0) & (low < image_size), 1 - fraction, 0).astype(np.float32)
        weight_high = np.where((low + 1 >= 0) & (low + 1 < image_size), fraction, 0).astype(np.float32)
        shape = [1] * grid.ndim
        shape[axis] = grid_size
        result = np.take(result, np.clip(low, 0, image_size - 1), axis=axis) * weight_low.reshape(
            shape
        ) + np.take(result, np.clip(low + 1, 0, image_size - 1), axis=axis) * weight_high.reshape(shape)
        inside_weight = inside_weight * (weight_low + weight_high).reshape(shape)
    return (result + (1.0 - inside_weight) * fill_value).astype(np.float32)


def equalize(array):
    """Histogram equalisation: each value -> fraction of pixels at or below it."""
    flat = array.reshape(-1)
    if flat.dtype.kind in "ui" and flat.size and int(flat.max()) - int(flat.min()) < 2**20:
        offset = flat.astype(np.int64) - int(flat.min())  # Integer pixels: a fast histogram.
        cdf = np.cumsum(np.bincount(offset), dtype=np.float64) / flat.size
        return cdf[offset].reshape(array.shape)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return (np.cumsum(counts, dtype=np.float64)[inverse] / flat.size).reshape(array.shape)


def normalize(array, method):
    """Intensity normalisation of one image (the paper's choices are the defaults per ndim).

    Args:
        array: np.ndarray. Pixel values.
        method: str. "equalize_standardize" (2D in the paper: histogram equalisation, then
            zero mean and unit SD), "standardize" (zero mean, unit SD), "subtract_mean" (3D in
            the paper), or "none".

    Returns:
        np.ndarray float32.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}. Received: {method!r}")
    array = np.asarray(array)
    if method == "equalize_standardize":
        array = equalize(array)
    array = array.astype(np.float32)
    if method in ("equalize_standardize", "standardize"):
        std = float(array.std())
        return (array - float(array.mean())) / (std if std > 0 else 1.0)
    if method == "subtract_mean":
        return array - float(array.mean())
    return array
