"""Geometry on the network grid: the coordinate convention, B-spline fields and resampling.

Coordinate convention (every function in `keraslm.ops` follows it)
-------------------------------------------------------------------
- Spatial tensors are channels-last, `(batch, *spatial, channels)`, with the spatial axes in
  array order `(y, x)` in 2D and `(z, y, x)` in 3D. A `grid_shape` / `input_shape` is given in
  that array order, like `tensor.shape[1:-1]`.
- Points are `(x, y[, z])` - the reverse of the array order - in continuous *grid index* units
  of the network input grid: pixel centres lie at integers, so pixel `(0, 0)` covers
  `[-0.5, 0.5] x [-0.5, 0.5]` and a grid of size `n` along an axis covers `[-0.5, n - 0.5]`.
  Point tensors are `(batch, num_landmarks, ndim)` float32; NaN marks a missing landmark.
  Everything given per axis as a vector (`grid_spacing`, translations, displacements, points)
  uses this `(x, y[, z])` order.
- `grid_spacing` is the physical size (mm) of one index step along x, y[, z]; it may be
  anisotropic. Physical quantities (translation, elastic displacement) are converted to index
  units by dividing by it.
- An affine matrix is homogeneous, `(batch, ndim + 1, ndim + 1)`, and acts on column vectors
  `(x, y[, z], 1)` in grid index units.

This module holds the building blocks (B-spline displacement fields, batched multilinear
resampling, argument checks); `keraslm.ops.augmentation` samples and applies random transforms
with them and `keraslm.ops.heatmaps` renders and decodes heatmaps.

All functions use `keras.ops` and run inside `tf.function(jit_compile=True)` with a static batch
size and static spatial shape; the same code path serves 2D and 3D (ndim is read from shapes).
"""
import itertools

import numpy as np
from keras import ops

from keraslm.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Argument checks (static shapes; raise ValueError naming the argument and what was received)
# ---------------------------------------------------------------------------------------------


def static_shape(x):
    """The static shape of a tensor, array or nested list as a tuple (entries may be None)."""
    shape = x.shape if hasattr(x, "shape") else np.shape(x)
    return tuple(None if d is None else int(d) for d in shape)


def check_images(images, arg="images"):
    """Check a channels-last image batch `(batch, *spatial, channels)` with 2 or 3 static spatial
    dims; return `(shape, ndim)`."""
    shape = static_shape(images)
    if len(shape) not in (4, 5):
        raise UsageError(
            f"`{arg}` must have shape (batch, y, x, channels) or (batch, z, y, x, channels). "
            f"Received: {arg}.shape={shape}")
    if any(d is None for d in shape):
        raise UsageError(
            f"`{arg}` must have a static shape (batch size, spatial size and channels known when "
            f"traced). Received: {arg}.shape={shape}")
    return shape, len(shape) - 2


def check_points(points, ndim, arg="points"):
    """Check a point batch `(batch, num_landmarks, ndim)`; return its static shape."""
    shape = static_shape(points)
    if len(shape) != 3 or shape[-1] != ndim:
        raise UsageError(
            f"`{arg}` must have shape (batch, num_landmarks, {ndim}) with coordinates (x, y"
            f"{', z' if ndim == 3 else ''}) matching the {ndim}D grid. Received: "
            f"{arg}.shape={shape}")
    return shape


def check_batch(batch, other, arg, other_arg):
    """Raise when two static batch sizes differ."""
    if batch is not None and other is not None and batch != other:
        raise UsageError(
            f"`{arg}` and `{other_arg}` must have the same batch size. Received: "
            f"{arg} batch size={batch}, {other_arg} batch size={other}")


def check_grid_shape(grid_shape, arg="grid_shape"):
    """A spatial grid shape in array order: a tuple of 2 or 3 ints >= 1."""
    try:
        values = tuple(grid_shape)
    except TypeError:
        values = None
    if (values is None or len(values) not in (2, 3)
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                       for v in values)):
        raise UsageError(
            f"`{arg}` must be a tuple of 2 or 3 ints >= 1 in array order (y, x) or (z, y, x). "
            f"Received: {arg}={grid_shape!r}")
    return tuple(int(v) for v in values)


def check_spacing(grid_spacing, ndim, arg="grid_spacing"):
    """Physical spacing along (x, y[, z]): a positive number or `ndim` positive numbers."""
    try:
        values = np.broadcast_to(np.asarray(grid_spacing, dtype=np.float64), (ndim,))
    except (TypeError, ValueError):
        values = None
    if values is None or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise UsageError(
            f"`{arg}` must be a positive number or {ndim} positive numbers (mm per index step "
            f"along x, y{', z' if ndim == 3 else ''}). Received: {arg}={grid_spacing!r}")
    return values.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Index grids
# ---------------------------------------------------------------------------------------------


def index_grid(grid_shape):
    """All pixel centres of a grid as points: `(prod(grid_shape), ndim)` float32, (x, y[, z])
    order, enumerated in row-major array order (the flattening order of `reshape`)."""
    axes = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in grid_shape], indexing="ij")
    return np.stack([a.reshape(-1) for a in axes[::-1]], axis=-1)


def grid_size_xyz(grid_shape):
    """The grid size along (x, y[, z]) as a float32 vector."""
    return np.asarray(grid_shape[::-1], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Cubic B-spline displacement fields
# ---------------------------------------------------------------------------------------------
# A field with G control points per axis over a grid of n pixels along that axis has knot
# spacing h = (n - 1) / (G - 3) (index units) and control point k at (k - 1) * h, k = 0..G-1, so
# the G - 3 mesh intervals span the pixel centres [0, n - 1] exactly - the layout of an ITK /
# SimpleITK cubic `BSplineTransform` with mesh size G - 3 whose transform domain is the pixel
# centres, origin 0 and physical dimensions (n - 1) * spacing. The displacement
# at p is sum_k beta3(p / h + 1 - k) * c_k: smooth (C2) everywhere and a convex combination of
# control values inside the grid.


def cubic_bspline(t):
    """The centred cubic B-spline beta3(t) (support |t| < 2), elementwise."""
    a = ops.abs(t)
    inner = 2.0 / 3.0 - a * a + 0.5 * a * a * a
    outer = (2.0 - a) ** 3 / 6.0
    return ops.where(a < 1.0, inner, ops.where(a < 2.0, outer, ops.zeros_like(a)))


def _bspline_axis_weights_np(n, num_points):
    """Static weights `(n, num_points)` of the control points at the n pixel centres."""
    h = (n - 1) / (num_points - 3)
    t = np.arange(n, dtype=np.float64)[:, None] / h + 1.0 - np.arange(num_points)[None, :]
    a = np.abs(t)
    w = np.where(a < 1, 2 / 3 - a ** 2 + 0.5 * a ** 3, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return w.astype(np.float32)


def bspline_dense(coefficients, grid_shape):
    """Evaluate a B-spline displacement at every pixel centre of the grid.

    Args:
        coefficients: tensor `(batch, G_0, ..., G_{ndim-1}, ndim)`. control point values, grid axes
            in array order, components in (x, y[, z]) order, index units.
        grid_shape: tuple of ints. spatial shape in array order.

    Returns:
        `(batch, *grid_shape, ndim)`. Computed separably (one small contraction per axis),
        so the cost is linear in the number of pixels.
    """
    ndim = len(grid_shape)
    letters = "ijk"[:ndim]
    out_letters = "zyx"[-ndim:]
    field = coefficients
    current = list(letters)
    for axis in reversed(range(ndim)):  # static loop over the 2 or 3 axes
        num_points = static_shape(coefficients)[1 + axis]
        weights = _bspline_axis_weights_np(grid_shape[axis], num_points)
        src = "b" + "".join(current) + "c"
        current[axis] = out_letters[axis]
        dst = "b" + "".join(current) + "c"
        field = ops.einsum(f"{src},{out_letters[axis]}{letters[axis]}->{dst}", field, weights)
    return field


def bspline_at(coefficients, points, grid_size):
    """Evaluate a B-spline displacement at arbitrary continuous points.

    Args:
        coefficients: tensor `(batch, G_0, ..., G_{ndim-1}, ndim)` (see `bspline_dense`).
        points: tensor `(batch, num_points, ndim)`. finite points, (x, y[, z]) index units.
        grid_size: tensor `(batch, ndim)`. grid size along (x, y[, z]) the field was defined on.

    Returns:
        `(batch, num_points, ndim)`, equal to `bspline_dense` at pixel centres.
    """
    shape = static_shape(coefficients)
    ndim = len(shape) - 2
    counts = shape[1:-1]  # array order
    weights = []  # per array axis: (batch, num_points, G_axis)
    for axis in range(ndim):
        k = ndim - 1 - axis  # the point component of this array axis
        num_points = counts[axis]
        h = (grid_size[:, k] - 1.0) / float(num_points - 3)
        t = points[:, :, k] / h[:, None] + 1.0
        knots = np.arange(num_points, dtype=np.float32)
        weights.append(cubic_bspline(t[:, :, None] - knots))
    outer = weights[0]
    for w in weights[1:]:
        outer = outer[..., :, None] * w[..., None, :]
        outer = ops.reshape(outer, (*static_shape(outer)[:2], -1))
    flat = ops.reshape(coefficients, (shape[0], int(np.prod(counts)), ndim))
    return ops.einsum("bpg,bgc->bpc", outer, flat)


# ---------------------------------------------------------------------------------------------
# Batched multilinear resampling with constant fill
# ---------------------------------------------------------------------------------------------


def resample(images, matrix, displacement=None, fill_value=0.0, intensity_scale=None,
             intensity_shift=None, output_shape=None):
    """Resample images at `matrix @ p + displacement(p)` for every output pixel centre p.

    Args:
        images: tensor `(batch, *spatial, channels)`.
        matrix: tensor `(batch, ndim + 1, ndim + 1)`. output grid index -> input grid index.
        displacement: optional tensor `(batch, *spatial, ndim)`. added to the mapped coordinates
            (input index units, (x, y[, z]) components).
        fill_value: float. value of everything outside the input grid; a corner outside the grid
            contributes `fill_value` with its interpolation weight (the image extended by the
            constant, then interpolated).
        intensity_scale, intensity_shift: optional tensors `(batch,)`. applied to the image content
            before blending with the fill, so the fill stays exactly `fill_value`.
        output_shape: optional tuple of ndim ints. spatial shape of the output grid in array order
            (default: the input's); a smaller one with a shifted `matrix` cuts crops out of larger
            images (`keraslm.ops.augmentation.crop_transforms`).

    Returns:
        `(batch, *output_shape, channels)` in the dtype of `images` (computed in float32).
        The 2**ndim corners are gathered from the flattened batch
        `(batch * prod(spatial), channels)`.
    """
    shape, ndim = check_images(images)
    batch, spatial, channels = shape[0], shape[1:-1], shape[-1]
    output_shape = spatial if output_shape is None else check_grid_shape(output_shape,
                                                                          "output_shape")
    if len(output_shape) != ndim:
        raise UsageError(f"`output_shape` must have {ndim} sizes for {ndim}D images. Received: "
                         f"output_shape={output_shape}")
    num_in = int(np.prod(spatial))
    num = int(np.prod(output_shape))
    dtype = images.dtype
    linear = ops.cast(matrix[:, :ndim, :ndim], "float32")
    offset = ops.cast(matrix[:, :ndim, ndim], "float32")
    # matrix @ p for every output pixel p, built by broadcasting one index vector per axis: no
    # `(num, ndim)` grid constant (it would be embedded in every exported graph that crops).
    coords = ops.reshape(offset, (batch,) + (1,) * ndim + (ndim,))
    for axis, n in enumerate(output_shape):  # array order; column ndim - 1 - axis is (x, y[, z])
        along = [1] * (ndim + 2)
        along[1 + axis] = n
        column = ops.reshape(linear[:, :, ndim - 1 - axis], (batch,) + (1,) * ndim + (ndim,))
        coords = coords + np.arange(n, dtype=np.float32).reshape(along) * column
    coords = ops.reshape(coords, (batch, num, ndim))
    if displacement is not None:
        coords = coords + ops.reshape(ops.cast(displacement, "float32"), (batch, num, ndim))
    sizes = spatial[::-1]  # (x, y[, z])
    # Clip far-away coordinates first (keeps int casts defined; stays outside the grid).
    coords = ops.clip(coords, -2.0, float(max(sizes) + 1))
    lower_f = ops.floor(coords)
    frac = coords - lower_f
    lower = ops.cast(lower_f, "int32")
    strides = [int(np.prod(sizes[:k])) for k in range(ndim)]  # x fastest
    base = (np.arange(batch, dtype=np.int32) * num_in)[:, None]
    flat = ops.reshape(ops.cast(images, "float32"), (batch * num_in, channels))
    inside_sum = None
    outside_weight = None
    for corner in itertools.product((0, 1), repeat=ndim):  # static: 4 or 8 corners
        index = base
        weight = None
        inside = None
        for k, bit in enumerate(corner):
            i = lower[:, :, k] + bit
            w = frac[:, :, k] if bit else 1.0 - frac[:, :, k]
            ok = ops.logical_and(i >= 0, i < sizes[k])
            weight = w if weight is None else weight * w
            inside = ok if inside is None else ops.logical_and(inside, ok)
            index = index + ops.clip(i, 0, sizes[k] - 1) * strides[k]
        values = ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=0),
                             (batch, num, channels))
        w_in = ops.where(inside, weight, ops.zeros_like(weight))
        term = values * w_in[:, :, None]
        inside_sum = term if inside_sum is None else inside_sum + term
        w_out = weight - w_in
        outside_weight = w_out if outside_weight is None else outside_weight + w_out
    outside_weight = outside_weight[:, :, None]
    if intensity_scale is not None:
        inside_sum = inside_sum * ops.cast(intensity_scale, "float32")[:, None, None]
    if intensity_shift is not None:
        inside_sum = inside_sum + (ops.cast(intensity_shift, "float32")[:, None, None]
                                   * (1.0 - outside_weight))
    out = inside_sum + float(fill_value) * outside_weight
    return ops.cast(ops.reshape(out, (batch, *output_shape, channels)), dtype)
