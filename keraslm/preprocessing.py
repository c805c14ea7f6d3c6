"""Host-side preprocessing: intensity normalisation and placing an image on the network grid.

The network sees every image on a fixed *grid*: `grid_shape` pixels (array order `(y, x)` /
`(z, y, x)`) of `grid_spacing` millimetres (along x, y[, z]). An image is placed on the grid
in its own index frame, centred and scaled by `grid_spacing / image.spacing` per axis, so the
whole image fits with its physical aspect ratio kept. The placement is one exact affine map
`grid index -> image index` (points `(x, y[, z])`, pixel centres at integers), recorded per
image, so landmarks go onto the grid and predictions come back to the image's millimetres
exactly:

    grid index --placement.grid_to_image_index--> image index --image.index_to_physical--> mm

This module is NumPy only; it runs once per image before training or prediction.
"""
import dataclasses

import numpy as np

from keraslm.errors import KeraslmError

NORMALIZATIONS = ("equalize_standardize", "standardize", "subtract_mean", "none")


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """The network input grid.

    Args:
        shape: tuple of int. Spatial shape in array order, `(height, width)` or
            `(depth, height, width)`.
        spacing: tuple of float. Millimetres per grid step along x, y[, z].
    """

    shape: tuple
    spacing: tuple

    def __post_init__(self):
        shape = tuple(int(n) for n in self.shape)
        spacing = tuple(float(s) for s in np.broadcast_to(self.spacing, (len(shape),)))
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise KeraslmError(f"grid `shape` must be 2 or 3 positive sizes. Received: shape={self.shape!r}")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise KeraslmError(f"grid `spacing` must be positive. Received: spacing={self.spacing!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)

    @property
    def ndim(self):
        """int. 2 or 3."""
        return len(self.shape)

    @property
    def size(self):
        """tuple of int. Grid pixels along x, y[, z]."""
        return tuple(reversed(self.shape))


def fitting_spacing(image_sizes, image_spacings, grid_shape):
    """The smallest isotropic grid spacing (mm) at which every image fits the grid.

    Args:
        image_sizes: array `(num_images, ndim)`. Pixels along x, y[, z].
        image_spacings: array `(num_images, ndim)`. Millimetres per pixel.
        grid_shape: tuple of int. Grid shape in array order.
    """
    extents_mm = np.asarray(image_sizes, float) * np.asarray(image_spacings, float)
    grid_size = np.array(list(reversed(grid_shape)), float)
    return float(np.max(extents_mm / grid_size))


@dataclasses.dataclass(frozen=True, eq=False)
class GridPlacement:
    """Where one image lies on the grid.

    Args:
        grid_to_image: np.ndarray `(ndim + 1, ndim + 1)`. Homogeneous affine map from grid
            index `(x, y[, z], 1)` to image index.
    """

    grid_to_image: np.ndarray

    @property
    def ndim(self):
        return self.grid_to_image.shape[0] - 1

    def grid_to_image_index(self, points_grid):
        """Grid index points `(..., ndim)` -> image index points."""
        points_grid = np.asarray(points_grid, np.float64)
        return points_grid @ self.grid_to_image[:-1, :-1].T + self.grid_to_image[:-1, -1]

    def image_index_to_grid(self, points_index):
        """Image index points `(..., ndim)` -> grid index points (exact inverse)."""
        inverse = np.linalg.inv(self.grid_to_image)
        points_index = np.asarray(points_index, np.float64)
        return points_index @ inverse[:-1, :-1].T + inverse[:-1, -1]


def place_on_grid(image, grid):
    """Centres `image` on `grid`, scaled by `grid.spacing / image.spacing` along each axis.

    Raises:
        KeraslmError: the image does not fit (its extent exceeds the grid's field of view) or
            the dimensions differ.
    """
    if image.ndim != grid.ndim:
        raise KeraslmError(
            f"{image.path or 'image'} is {image.ndim}D but the grid is {grid.ndim}D"
        )
    image_size = np.array(image.size, float)
    grid_size = np.array(grid.size, float)
    scale = np.array(grid.spacing) / image.spacing  # Image pixels per grid step.
    extent_mm, field_mm = image_size * image.spacing, grid_size * np.array(grid.spacing)
    if np.any(extent_mm > field_mm * (1 + 1e-6)):
        raise KeraslmError(
            f"{image.path or 'image'} ({np.round(extent_mm, 2).tolist()} mm) is larger than the "
            f"grid's field of view ({np.round(field_mm, 2).tolist()} mm = {list(grid.size)} x "
            f"{list(grid.spacing)} mm); use a larger grid spacing or shape"
        )
    matrix = np.eye(grid.ndim + 1)
    matrix[:-1, :-1] = np.diag(scale)
    # Centre of the grid maps onto the centre of the image.
    matrix[:-1, -1] = (image_size - 1) / 2 - scale * (grid_size - 1) / 2
    return GridPlacement(matrix)


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
    widths = [2 * int(s // 2) + 1 if s >= 2 else 1 for s in reversed(scale_xyz)]
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


def _equalize(array):
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
        raise KeraslmError(f"`normalization` must be one of {NORMALIZATIONS}. Received: {method!r}")
    array = np.asarray(array)
    if method == "equalize_standardize":
        array = _equalize(array)
    array = array.astype(np.float32)
    if method in ("equalize_standardize", "standardize"):
        std = float(array.std())
        return (array - float(array.mean())) / (std if std > 0 else 1.0)
    if method == "subtract_mean":
        return array - float(array.mean())
    return array
