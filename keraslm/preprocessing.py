"""Host-side preprocessing: intensity normalisation and placing an image on the network grid.

The network sees every image on a fixed *grid*: `grid_shape` pixels (array order `(y, x)` /
`(z, y, x)`) of `grid_spacing` millimetres (along x, y[, z]). An image is placed on the grid
in its own index frame, centred and scaled by `grid_spacing / image.spacing` per axis, so the
whole image fits with its physical aspect ratio kept. The placement is one exact affine map
`grid index -> image index` (points `(x, y[, z])`, pixel centres at integers), recorded per
image, so landmarks go onto the grid and predictions come back to the image's millimetres
exactly:

    grid index --placement.grid_to_image_index--> image index --image.index_to_physical--> mm

ONE implementation, in TensorFlow ops, serves training's one-off preparation of every image
(`keraslm.training.pipeline` through `prepare_image`), `keraslm.predict` and the exported SavedModel's
image signatures (`keraslm.export`): `prepare_on_grid` normalises, places and resamples a
tensor of any size inside a graph. `GridSpec` and `GridPlacement` are the
host-side descriptions (NumPy) of what it computes. The NumPy reference implementations live in
the tests (`tests/reference_preprocessing.py`).

TF-only edge: dynamic-shape resampling with `tf.gather`, histogram equalisation with
`tf.math.bincount` / `tf.sort`.
"""
import dataclasses
import functools

import numpy as np
import tensorflow as tf

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


def grid_to_image_matrix(image_size, image_spacing, grid):
    """The placement of an image on the grid as a homogeneous affine map, in TF ops (graph-safe).

    The image is centred on the grid and scaled by `grid.spacing / image_spacing` per axis.

    Args:
        image_size: tensor `(ndim,)`. Image pixels along x, y[, z].
        image_spacing: tensor `(ndim,)`. Millimetres per image pixel along x, y[, z].
        grid: GridSpec.

    Returns:
        float64 tensor `(ndim + 1, ndim + 1)`: grid index `(x, y[, z], 1)` -> image index.
    """
    image_size = tf.cast(image_size, tf.float64)
    scale = tf.constant(grid.spacing, tf.float64) / tf.cast(image_spacing, tf.float64)
    grid_size = tf.constant(grid.size, tf.float64)
    offset = (image_size - 1) / 2 - scale * (grid_size - 1) / 2
    top = tf.concat([tf.linalg.diag(scale), offset[:, tf.newaxis]], axis=1)
    bottom = tf.one_hot(grid.ndim, grid.ndim + 1, dtype=tf.float64)[tf.newaxis]
    return tf.concat([top, bottom], axis=0)


def field_excess_mm(image_size, image_spacing, grid):
    """How far the image's extent exceeds the grid's field of view per axis, mm (<= 0: fits).

    A relative tolerance of 1e-6 lets an image that fits exactly (the fitting spacing) pass."""
    extent = tf.cast(image_size, tf.float64) * tf.cast(image_spacing, tf.float64)
    field = tf.constant(grid.size, tf.float64) * tf.constant(grid.spacing, tf.float64)
    return extent - field * (1 + 1e-6)


def field_shortfall_mm(image_size, image_spacing, grid):
    """How far the image's extent is above one grid pixel per axis, mm (< 0: the whole image
    is smaller than one pixel of the grid)."""
    extent = tf.cast(image_size, tf.float64) * tf.cast(image_spacing, tf.float64)
    return extent - tf.constant(grid.spacing, tf.float64)


def place_on_grid(image, grid):
    """Centres `image` on `grid`, scaled by `grid.spacing / image.spacing` along each axis.

    Raises:
        KeraslmError: the image does not fit (its extent exceeds the grid's field of view), is
            smaller than one grid pixel (a spacing mistake), or the dimensions differ.
    """
    if image.ndim != grid.ndim:
        raise KeraslmError(
            f"{image.path or 'image'} is {image.ndim}D but the grid is {grid.ndim}D"
        )
    if np.any(field_excess_mm(image.size, image.spacing, grid).numpy() > 0):
        extent_mm = np.array(image.size, float) * image.spacing
        field_mm = np.array(grid.size, float) * np.array(grid.spacing)
        raise KeraslmError(
            f"{image.path or 'image'} ({np.round(extent_mm, 2).tolist()} mm) is larger than the "
            f"grid's field of view ({np.round(field_mm, 2).tolist()} mm = {list(grid.size)} x "
            f"{list(grid.spacing)} mm): crop the image to the region the model was trained on, "
            "or train with a larger --grid-spacing or --grid-shape"
        )
    if np.any(field_shortfall_mm(image.size, image.spacing, grid).numpy() < 0):
        extent_mm = np.array(image.size, float) * image.spacing
        raise KeraslmError(
            f"{image.path or 'image'} ({extent_mm.tolist()} mm = pixels x spacing "
            f"{list(np.asarray(image.spacing, float))} mm) is smaller than one pixel of the grid "
            f"({list(grid.spacing)} mm); is the spacing right?")
    return GridPlacement(grid_to_image_matrix(image.size, image.spacing, grid).numpy())


#: Relative tolerance of the anti-aliasing box's width choice (`_axis_resampling_matrix`).
SCALE_TOLERANCE = 1e-6


def _axis_resampling_matrix(length, grid_size, scale, offset):
    """`(grid_size, length)` float32: row i holds the weights with which grid position i reads
    the `length` pixels of one axis - linear interpolation at `scale * i + offset` (image
    index) between the image averaged over a centred box of odd width about `scale` wide
    (anti-aliasing, edges replicated; width 1 where `scale < 2`). Neighbours outside the image
    get weight 0 (the caller fills there)."""
    # The width jumps at even scales (1 -> 3 at 2): a scale a rounding error below one (a
    # spacing stored as 0.4999999 of the grid's) takes the same width as the exact one, so the
    # same scan read from two files gives the same grid image (it moved points by ~a voxel).
    width = 2 * tf.cast(tf.floor(scale / 2 * (1 + SCALE_TOLERANCE)), tf.int32) + 1
    half = width // 2
    coordinate = scale * tf.range(grid_size, dtype=tf.float64) + offset
    low = tf.cast(tf.floor(coordinate), tf.int32)
    fraction = tf.cast(coordinate - tf.floor(coordinate), tf.float32)
    weight_low = tf.where((low >= 0) & (low < length), 1 - fraction, 0.0)
    weight_high = tf.where((low + 1 >= 0) & (low + 1 < length), fraction, 0.0)
    # Both neighbours of every grid position, each spread over its box's taps.
    centres = tf.clip_by_value(tf.concat([low, low + 1], 0), 0, length - 1)
    taps = tf.clip_by_value(centres[:, tf.newaxis] + tf.range(-half, half + 1)[tf.newaxis, :],
                            0, length - 1)
    rows = tf.broadcast_to(tf.tile(tf.range(grid_size), [2])[:, tf.newaxis], tf.shape(taps))
    weights = tf.broadcast_to(
        (tf.concat([weight_low, weight_high], 0) / tf.cast(width, tf.float32))[:, tf.newaxis],
        tf.shape(taps))
    indices = tf.reshape(tf.stack([rows, taps], axis=-1), [-1, 2])
    # scatter_nd adds repeated indices: the replicated edge pixel gets every clipped tap.
    return tf.scatter_nd(indices, tf.reshape(weights, [-1]), [grid_size, length])


def resample_to_grid(array, placement, grid, fill_value=0.0):
    """Resamples an image array onto the grid with (bi/tri)linear interpolation, in TF ops.

    Where the grid is coarser than the image, the image is first averaged over centred boxes
    about the scale factor wide (odd widths, anti-aliasing). Outside the image the grid gets
    `fill_value`. The placement is axis-aligned, so resampling is separable: one array axis
    at a time, each a matrix product with that axis's `(grid size, image size)` weights (one
    dense product per axis: fast on any device, and no pass of gathers and running sums over
    a radiograph's millions of pixels). Any image size (dynamic shapes); graph- and eager-safe.

    Args:
        array: array or tensor. Image `[y, x]` / `[z, y, x]`.
        placement: GridPlacement, or a tensor `(ndim + 1, ndim + 1)` grid -> image index map.
        grid: GridSpec.
        fill_value: float.

    Returns:
        float32 tensor of shape `grid.shape`.
    """
    matrix = placement.grid_to_image if isinstance(placement, GridPlacement) else placement
    matrix = tf.cast(matrix, tf.float64)
    result = tf.cast(array, tf.float32)
    inside_weight = tf.ones((1,) * grid.ndim, tf.float32)
    for d, grid_size in enumerate(grid.size):  # d: point axis x, y[, z].
        axis = grid.ndim - 1 - d  # The matching array axis.
        weights = _axis_resampling_matrix(tf.shape(result)[axis], grid_size, matrix[d, d],
                                          matrix[d, -1])
        # The axis contracted and appended last, then moved back to its place.
        result = tf.tensordot(result, weights, [[axis], [1]])
        order = list(range(grid.ndim - 1))
        order.insert(axis, grid.ndim - 1)
        result = tf.transpose(result, order)
        shape = [1] * grid.ndim
        shape[axis] = grid_size
        inside_weight = inside_weight * tf.reshape(tf.reduce_sum(weights, axis=1), shape)
    result = result + (1.0 - inside_weight) * fill_value
    return tf.ensure_shape(result, grid.shape)


def _value_table(flat):
    """For integer values over a modest range: (each value's index into the table, the count
    of each value, the fraction of values at or below each value) - equalisation per grey
    value, float64."""
    if flat.dtype in (tf.uint8, tf.int8, tf.uint16, tf.int16):  # Differences fit in int32.
        return _value_table_of(tf.cast(flat, tf.int32) - tf.cast(tf.reduce_min(flat), tf.int32))
    # Values may lie beyond int32 (a small range of large values): subtract in int64.
    return _value_table_of(tf.cast(tf.cast(flat, tf.int64) - tf.cast(tf.reduce_min(flat), tf.int64),
                                   tf.int32))


def _value_table_of(offset):
    histogram = tf.cast(tf.math.bincount(offset, dtype=tf.int64), tf.float64)
    return offset, histogram, tf.cumsum(histogram) / tf.cast(tf.size(offset), tf.float64)


def _equalize_by_sort(flat):
    ordered = tf.sort(flat)
    return (tf.cast(tf.searchsorted(ordered, flat, side="right"), tf.float64)
            / tf.cast(tf.size(flat), tf.float64))


def _integer_valued_small_range(array, flat):
    """Whether every value is an integer and max - min < 2**20 (a histogram fits)."""
    small_range = tf.cast(tf.reduce_max(flat), tf.float64) - tf.cast(tf.reduce_min(flat), tf.float64) < 2**20
    if array.dtype.is_integer:
        return small_range
    return tf.logical_and(small_range, tf.reduce_all(tf.equal(flat, tf.round(flat))))


def equalize(array):
    """Histogram equalisation, in TF ops: each value -> the fraction of pixels at or below it
    (float32). Integer values over a modest range (8/16-bit pixels, also when sent as floats)
    use a histogram, much faster than the sort the others use; the same fractions either way."""
    array = tf.convert_to_tensor(array)
    flat = tf.reshape(array, [-1])

    def by_histogram():
        offset, _, equalized = _value_table(flat)
        return tf.gather(equalized, offset)

    fraction = tf.cond(_integer_valued_small_range(array, flat), by_histogram,
                       lambda: _equalize_by_sort(flat))
    return tf.reshape(tf.cast(fraction, tf.float32), tf.shape(array))


def _standardize(array):
    """Zero mean, unit SD (population; SD 0 left as 1), computed in float64 -> float32."""
    mean = tf.reduce_mean(tf.cast(array, tf.float64))
    std = tf.math.reduce_std(tf.cast(array, tf.float64))
    std = tf.where(std > 0, std, tf.ones_like(std))
    return tf.cast((tf.cast(array, tf.float64) - mean) / std, tf.float32)


def _equalize_standardize(array):
    """`equalize` then `_standardize`. Integer values over a modest range go through a table
    per grey value - the equalised value's mean and SD weighted by the histogram, then one
    lookup per pixel - instead of several passes over every pixel: the same numbers, at a
    fraction of the time for a radiograph."""
    flat = tf.reshape(array, [-1])

    def by_table():
        offset, histogram, equalized = _value_table(flat)
        count = tf.cast(tf.size(flat), tf.float64)
        mean = tf.reduce_sum(histogram * equalized) / count
        std = tf.sqrt(tf.reduce_sum(histogram * tf.square(equalized - mean)) / count)
        std = tf.where(std > 0, std, tf.ones_like(std))
        return tf.gather(tf.cast((equalized - mean) / std, tf.float32), offset)

    def by_sort():
        return _standardize(tf.cast(_equalize_by_sort(flat), tf.float32))

    return tf.reshape(tf.cond(_integer_valued_small_range(array, flat), by_table, by_sort),
                      tf.shape(array))


def normalize(array, method):
    """Intensity normalisation of one image in TF ops (the paper's choices are the defaults
    per ndim).

    Args:
        array: array or tensor. Pixel values, any real dtype.
        method: str. "equalize_standardize" (2D in the paper: histogram equalisation, then
            zero mean and unit SD), "standardize" (zero mean, unit SD), "subtract_mean" (3D in
            the paper), or "none".

    Returns:
        float32 tensor of the same shape.
    """
    if method not in NORMALIZATIONS:
        raise KeraslmError(f"`normalization` must be one of {NORMALIZATIONS}. Received: {method!r}")
    array = tf.convert_to_tensor(array)
    if method == "equalize_standardize":
        return _equalize_standardize(array)
    array = tf.cast(array, tf.float32)
    if method == "standardize":
        return _standardize(array)
    if method == "subtract_mean":
        return tf.cast(tf.cast(array, tf.float64) - tf.reduce_mean(tf.cast(array, tf.float64)),
                       tf.float32)
    return array


def prepare_on_grid(array, spacing, grid, normalization):
    """One image onto the network grid, in TF ops: normalise, place, resample.

    Args:
        array: tensor `[y, x]` / `[z, y, x]`, any size and real dtype.
        spacing: tensor `(ndim,)`. mm per pixel along x, y[, z].
        grid: GridSpec.
        normalization: str. See `normalize`.

    Returns:
        (grid image float32 `grid.shape`, grid -> image index map float64 `(ndim+1, ndim+1)`).
        Inside a graph an image larger than the grid's field of view fails with an
        InvalidArgument error saying so.
    """
    array = tf.convert_to_tensor(array)
    size = tf.reverse(tf.shape(array), [0])  # x, y[, z]
    excess = field_excess_mm(size, spacing, grid)
    axes = "x, y" + (", z" if grid.ndim == 3 else "")
    extent = tf.strings.reduce_join(tf.strings.as_string(
        tf.cast(size, tf.float64) * tf.cast(spacing, tf.float64), precision=2), separator=", ")
    field = [round(n * s, 2) for n, s in zip(grid.size, grid.spacing)]
    check = tf.debugging.Assert(
        tf.reduce_max(excess) <= 0.0,
        [tf.strings.join(["the image is [", extent, f"] mm along {axes} (pixels x spacing), "
                          f"larger than the field of view of the model ({field} mm); crop it to "
                          "the region the model was trained on, or check the spacing"])])
    # An image smaller than one grid pixel is a spacing mistake (e.g. metres for mm), and its
    # anti-aliasing box would be as wide as the scale factor: refused before any memory is used.
    too_small = tf.debugging.Assert(
        tf.reduce_min(field_shortfall_mm(size, spacing, grid)) >= 0.0,
        [tf.strings.join(["the image is [", extent, f"] mm along {axes} (pixels x spacing), "
                          "smaller than one pixel of the grid of the model "
                          f"({[round(s, 4) for s in grid.spacing]} mm): is the spacing right?"])])
    with tf.control_dependencies([check, too_small]):
        matrix = grid_to_image_matrix(size, spacing, grid)
    return resample_to_grid(normalize(array, normalization), matrix, grid), matrix


@functools.lru_cache(maxsize=32)
def _prepare_function(grid, normalization, dtype, ndim):
    """`keraslm.preprocessing.prepare_on_grid` compiled for one grid, normalisation, pixel dtype
    and dimension, any image size."""
    return tf.function(
        lambda array, spacing: prepare_on_grid(array, spacing, grid, normalization),
        input_signature=[tf.TensorSpec([None] * ndim, dtype), tf.TensorSpec([ndim], tf.float64)])


def prepare_image(image, grid, normalization):
    """One `keraslm.io.Image` onto the grid: (grid array `grid.shape` float32, GridPlacement),
    through `prepare_on_grid`, the implementation the exported model runs.

    Raises:
        KeraslmError: the image does not fit the grid or has another dimension (names it).
    """
    placement = place_on_grid(image, grid)
    pixels = np.asarray(image.array)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    function = _prepare_function(grid, normalization, tf.as_dtype(pixels.dtype), grid.ndim)
    array, _ = function(pixels, np.asarray(image.spacing, np.float64))
    return array.numpy(), placement
