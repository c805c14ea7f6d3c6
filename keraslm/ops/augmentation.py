"""Batched random spatial and intensity augmentation on the device: sample, then apply.

Conventions are those of `keraslm.ops.geometry`: images `(batch, *spatial, channels)` with
spatial axes `(y, x)` / `(z, y, x)`; points `(batch, num_landmarks, ndim)` as `(x, y[, z])` in
grid index units (pixel centres at integers), NaN = missing; `grid_spacing` in mm per index step
along x, y[, z].

Sampling is separate from applying (as in Keras' preprocessing layers):
`sample_transforms` draws one random transform per sample and returns a dict of batched tensors;
`apply_to_images` resamples images with it and `apply_to_points` moves landmarks with the exact
inverse of the same map, so images and landmarks cannot disagree. `device_stage` does both and
renders the target heatmaps with a `keraslm.ops.heatmaps.HeatmapCodec`.

The transform of one sample. The parameters describe how the image *content* moves, in physical
units about the grid centre `c = (size - 1) / 2` (index units): content at physical offset `q`
(mm, relative to the centre) moves to `R D q + t`, with `R` the rotation (2D: one angle; 3D:
`Rz @ Ry @ Rx`, one angle about each axis), `D` the diagonal scaling (isotropic factor times
per-axis factors; negative along an axis the sample is mirrored along) and `t` the translation
(mm). Resampling needs the opposite direction, the *sampling map* from output grid index to
input grid index:

    matrix         = T(c) S^-1 D^-1 R^T T(-t) S T(-c)      (output index -> input index)
    inverse_matrix = T(c) S^-1 T(t) R D S T(-c)            (input index -> output index)

with `S = diag(grid_spacing)` and `T` translations; both are composed analytically, so the
inverse is exact. An elastic deformation adds a smooth displacement `u` (input index units) to
the sampling map: `p_in = matrix @ p_out + u(p_out)`, where `u` is a cubic B-spline over a
coarse control grid (see `keraslm.ops.geometry`). Landmarks are moved by solving that equation
for `p_out` with the fixed-point iteration `p_out <- inverse_matrix @ (p_in - u(p_out))`.

Random numbers come from `keras.random.uniform` with the `seed` given to `sample_transforms`:
pass a `keras.random.SeedGenerator` (its state advances on every call, also inside a compiled
Keras `train_step` or `tf.function`; use this for training, and keep the generator as an
attribute of the model or layer so that its state is tracked and checkpointed) or an int
(stateless: the same int gives the same transforms, also on every call of a compiled function).
Under a distribution strategy every replica reads the same generator state, so replicas draw the
same transforms for their different samples unless the caller folds the replica id into the
seed.
"""
import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keraslm.errors import UsageError
from keraslm.ops.geometry import (
    bspline_at,
    bspline_dense,
    check_batch,
    check_grid_shape,
    check_images,
    check_points,
    check_spacing,
    grid_size_xyz,
    resample,
    static_shape,
)

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Ranges of the random augmentation (all uniform; everything 0 gives the identity).

    Args:
        rotation_degrees: float >= 0. max |angle| in degrees, about the grid centre (3D: about each
            of the x, y and z axes independently).
        translation_mm: float >= 0. max |translation| per axis, mm.
        scale: float in [0, 1). isotropic scaling factor in [1 - scale, 1 + scale].
        axis_scale: float in [0, 1). extra per-axis factor in [1 - axis_scale, 1 + axis_scale].
        elastic_mm: float >= 0. max |displacement| of each control point per axis, mm (the dense
            displacement is a convex combination of them, so it stays within the bound); 0 = off.
        elastic_grid_points: int >= 4. control points per axis of the cubic B-spline; the grid is
            covered by `elastic_grid_points - 3` mesh intervals (4: one global cubic; more: more
            local deformation).
        intensity_scale: float in [0, 1). intensity factor in [1 - intensity_scale,
            1 + intensity_scale].
        intensity_shift: float >= 0. intensity offset in [-intensity_shift, intensity_shift]
            (units of the image intensities, e.g. standard deviations after normalisation).
        blur_mm: float >= 0. Gaussian blur of the resampled image with a standard deviation in
            [0, blur_mm] mm (another X-ray machine's or exposure's sharpness); 0 = off.
        noise_std: float >= 0. additive Gaussian pixel noise with a standard deviation in
            [0, noise_std] (image intensity units); 0 = off. Intensity scaling, shift, blur and
            noise touch images only (`apply_to_images(..., intensity=True)`), never masks.
        flip_axes: str. the axes ("x", "y", "z") along which each sample is mirrored about the
            grid centre with probability 1/2, each independently; landmarks keep their
            identities (right for views without left/right pairs, e.g. a lateral
            cephalogram facing either way); "" = off.

    Examples:
    >>> AugmentationConfig(rotation_degrees=15, elastic_mm=3.0, elastic_grid_points=6)
    >>> AugmentationConfig.identity()
    """

    rotation_degrees: float = 30.0
    translation_mm: float = 10.0
    scale: float = 0.1
    axis_scale: float = 0.0
    elastic_mm: float = 0.0
    elastic_grid_points: int = 4
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    blur_mm: float = 0.0
    noise_std: float = 0.0
    flip_axes: str = ""

    def __post_init__(self):
        for name, upper in (("rotation_degrees", 180.0), ("translation_mm", None),
                            ("scale", 1.0), ("axis_scale", 1.0), ("elastic_mm", None),
                            ("intensity_scale", 1.0), ("intensity_shift", None),
                            ("blur_mm", None), ("noise_std", None)):
            value = getattr(self, name)
            ok = (isinstance(value, (int, float, np.integer, np.floating))
                  and not isinstance(value, bool) and math.isfinite(value) and value >= 0
                  and (upper is None or value < upper or (name == "rotation_degrees"
                                                          and value <= upper)))
            if not ok:
                bound = (f"in [0, {upper}]" if name == "rotation_degrees" else
                         f"in [0, {upper})" if upper is not None else "a finite number >= 0")
                raise UsageError(f"`{name}` must be {bound}. Received: {name}={value!r}")
        if not (isinstance(self.flip_axes, str) and set(self.flip_axes) <= set("xyz")
                and len(set(self.flip_axes)) == len(self.flip_axes)):
            raise UsageError("`flip_axes` must be a string of distinct axis names from 'xyz' "
                             f"(e.g. 'x'), or '' for none. Received: flip_axes={self.flip_axes!r}")
        points = self.elastic_grid_points
        if not (isinstance(points, (int, np.integer)) and not isinstance(points, bool)
                and points >= 4):
            raise UsageError(
                "`elastic_grid_points` must be an int >= 4 (cubic B-spline control points per "
                f"axis). Received: elastic_grid_points={points!r}")

    @classmethod
    def identity(cls):
        """A config whose transforms are all the identity."""
        return cls(rotation_degrees=0.0, translation_mm=0.0, scale=0.0, axis_scale=0.0,
                   elastic_mm=0.0, intensity_scale=0.0, intensity_shift=0.0, blur_mm=0.0,
                   noise_std=0.0, flip_axes="")


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def _stack_matrix(rows):
    """Rows of `(batch,)` tensors or floats -> `(batch, n, n)`."""
    batch_like = next(v for row in rows for v in row if not isinstance(v, float))
    return ops.stack([ops.stack([v if not isinstance(v, float) else
                                 ops.full_like(batch_like, v) for v in row], axis=-1)
                      for row in rows], axis=-2)


def _rotation(angles):
    """Rotation matrices `(batch, ndim, ndim)` from angles `(batch, 1)` (2D) or `(batch, 3)`
    (3D: about x, y, z; R = Rz @ Ry @ Rx), acting on (x, y[, z]) column vectors."""
    cos, sin = ops.cos(angles), ops.sin(angles)
    if static_shape(angles)[1] == 1:
        c, s = cos[:, 0], sin[:, 0]
        return _stack_matrix([[c, -s], [s, c]])
    cx, cy, cz = cos[:, 0], cos[:, 1], cos[:, 2]
    sx, sy, sz = sin[:, 0], sin[:, 1], sin[:, 2]
    rx = _stack_matrix([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = _stack_matrix([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = _stack_matrix([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return ops.matmul(rz, ops.matmul(ry, rx))


def _homogeneous(linear, offset):
    """`(batch, ndim, ndim)` and `(batch, ndim)` -> `(batch, ndim + 1, ndim + 1)`."""
    batch, ndim = static_shape(offset)
    top = ops.concatenate([linear, offset[:, :, None]], axis=-1)
    bottom = ops.concatenate([ops.zeros((batch, 1, ndim)), ops.ones((batch, 1, 1))], axis=-1)
    return ops.concatenate([top, bottom], axis=-2)


def _diag(values):
    """`(batch, n)` -> `(batch, n, n)` diagonal matrices."""
    n = static_shape(values)[1]
    return values[:, :, None] * np.eye(n, dtype=np.float32)


def sample_transforms(seed, batch_size, grid_shape, grid_spacing, config=None):
    """Draw one random augmentation transform per sample.

    Args:
        seed: `keras.random.SeedGenerator` (stateful; use it in training) or int (stateless).
        batch_size: int >= 1. static batch size.
        grid_shape: tuple of 2 or 3 ints. spatial shape of the network grid, array order (y, x) /
            (z, y, x).
        grid_spacing: float or sequence of ndim floats. mm per index step along x, y[, z].
        config: `AugmentationConfig` (default: `AugmentationConfig()`).

    Returns:
        a dict of float32 tensors:
            "matrix": `(batch, ndim + 1, ndim + 1)`. sampling map, output index -> input index.
            "inverse_matrix": `(batch, ndim + 1, ndim + 1)`. its exact inverse.
            "grid_size": `(batch, ndim)`. grid size along (x, y[, z]) the transform belongs to.
            "intensity_scale", "intensity_shift": `(batch,)`.
            "blur_sigma" (only when `config.blur_mm > 0`): `(batch, ndim)` standard deviation
                of the Gaussian blur in grid index units along x, y[, z].
            "noise" (only when `config.noise_std > 0`): `(batch, *grid_shape, 1)` the additive
                noise (each sample's standard deviation drawn in [0, `config.noise_std`]).
            "elastic" (only when `config.elastic_mm > 0`): `(batch, G, ..., G, ndim)` B-spline
                control point displacements in input index units, (x, y[, z]) components, control
                grid axes in array order (G = `config.elastic_grid_points`).

    Examples:
    >>> seeds = keras.random.SeedGenerator(0)
    >>> t = sample_transforms(seeds, 4, (64, 48), (1.0, 1.0), AugmentationConfig())
    """
    config = AugmentationConfig() if config is None else config
    if not isinstance(config, AugmentationConfig):
        raise UsageError(
            f"`config` must be an AugmentationConfig. Received: config={config!r}")
    if not (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
            and batch_size >= 1):
        raise UsageError(f"`batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")
    if not isinstance(seed, (int, np.integer, keras.random.SeedGenerator)) or isinstance(
            seed, bool):
        raise UsageError(
            "`seed` must be a keras.random.SeedGenerator or an int. "
            f"Received: seed={seed!r}")
    grid_shape = check_grid_shape(grid_shape)
    ndim = len(grid_shape)
    spacing = check_spacing(grid_spacing, ndim)
    elastic = config.elastic_mm > 0
    if elastic and min(grid_shape) < 2:
        raise UsageError(
            "elastic deformation needs a grid of at least 2 pixels along every axis. "
            f"Received: grid_shape={grid_shape}")
    num_angles = 1 if ndim == 2 else 3
    num_control = config.elastic_grid_points ** ndim * ndim if elastic else 0
    blur, noise = config.blur_mm > 0, config.noise_std > 0
    flip = np.array(["xyz"[axis] in config.flip_axes for axis in range(ndim)])
    if flip.sum() < len(config.flip_axes):
        raise UsageError(f"`flip_axes` names an axis a {ndim}D grid does not have. Received: "
                         f"flip_axes={config.flip_axes!r}")
    # Blur, noise and flips draw only when on, so that runs without them keep their random
    # stream.
    sizes = [num_angles, ndim, 1, ndim, 1, 1, num_control, int(blur), int(noise),
             ndim * int(flip.any())]
    seed = int(seed) if isinstance(seed, np.integer) else seed
    # One draw for all parameters, so that an int seed does not repeat numbers across them.
    u = keras.random.uniform((batch_size, sum(sizes)), minval=-1.0, maxval=1.0, seed=seed)
    parts = []
    start = 0
    for n in sizes:
        parts.append(u[:, start:start + n])
        start += n
    (u_angle, u_trans, u_iso, u_axis, u_iscale, u_ishift, u_elastic, u_blur, u_noise,
     u_flip) = parts

    angles = u_angle * math.radians(config.rotation_degrees)
    translation = u_trans * config.translation_mm  # mm
    scales = (1.0 + u_iso * config.scale) * (1.0 + u_axis * config.axis_scale)  # (batch, ndim)
    if flip.any():  # A mirror is a scaling by -1 along the axis.
        mirrored = ops.logical_and(u_flip < 0.0, flip[None, :])
        scales = ops.where(mirrored, -scales, scales)
    rotation = _rotation(angles)
    centre = (grid_size_xyz(grid_shape) - 1.0) / 2.0
    # Index -> centred mm and back (constants).
    to_centred_mm = _homogeneous(
        ops.broadcast_to(np.diag(spacing), (batch_size, ndim, ndim)),
        ops.broadcast_to(-centre * spacing, (batch_size, ndim)))
    from_centred_mm = _homogeneous(
        ops.broadcast_to(np.diag(1.0 / spacing).astype(np.float32), (batch_size, ndim, ndim)),
        ops.broadcast_to(centre, (batch_size, ndim)))
    # Content map in centred mm: q -> R D q + t ; its inverse q -> D^-1 R^T (q - t).
    forward_mm = _homogeneous(ops.matmul(rotation, _diag(scales)), translation)
    inverse_linear = ops.matmul(_diag(1.0 / scales), ops.transpose(rotation, (0, 2, 1)))
    inverse_mm = _homogeneous(inverse_linear,
                              -ops.einsum("bij,bj->bi", inverse_linear, translation))
    matrix = ops.matmul(from_centred_mm, ops.matmul(inverse_mm, to_centred_mm))
    inverse_matrix = ops.matmul(from_centred_mm, ops.matmul(forward_mm, to_centred_mm))

    transforms = {
        "matrix": matrix,
        "inverse_matrix": inverse_matrix,
        "grid_size": ops.broadcast_to(grid_size_xyz(grid_shape), (batch_size, ndim)),
        "intensity_scale": 1.0 + u_iscale[:, 0] * config.intensity_scale,
        "intensity_shift": u_ishift[:, 0] * config.intensity_shift,
    }
    if elastic:
        g = config.elastic_grid_points
        control = ops.reshape(u_elastic, (batch_size, *([g] * ndim), ndim))
        transforms["elastic"] = control * (config.elastic_mm / spacing)  # mm -> index units
    if blur:  # u in [-1, 1] -> sigma in [0, blur_mm], mm -> index units per axis
        transforms["blur_sigma"] = (u_blur + 1.0) * 0.5 * (config.blur_mm / spacing)
    if noise:
        noise_seed = seed + 1 if isinstance(seed, int) else seed
        field = keras.random.normal((batch_size, *grid_shape, 1), seed=noise_seed)
        std = (u_noise[:, 0] + 1.0) * 0.5 * config.noise_std
        transforms["noise"] = field * ops.reshape(std, (batch_size,) + (1,) * (ndim + 1))
    return transforms


def gaussian_blur(images, sigma):
    """Blurs each image with its own Gaussian (keras.ops; exact, any sigma, 2D and 3D).

    Separable: along each spatial axis the image is multiplied by a `(length, length)` matrix of
    Gaussian weights whose rows are normalised (so the border keeps its brightness), one matrix
    per image. The cost grows with the axis length, not with sigma.

    Args:
        images: tensor `(batch, *spatial, channels)`.
        sigma: tensor `(batch, ndim)`. Standard deviation in index units along x, y[, z]; 0 leaves
            that axis unchanged.

    Returns:
        blurred images, float32, same shape.
    """
    blurred = ops.cast(ops.convert_to_tensor(images), "float32")
    shape, ndim = check_images(blurred)
    sigma = ops.cast(ops.convert_to_tensor(sigma), "float32")
    check_batch(shape[0], static_shape(sigma)[0], "images", "sigma")
    for axis in range(1, ndim + 1):  # array order: (y, x) / (z, y, x)
        length = shape[axis]
        position = ops.arange(length, dtype="float32")
        squared = ops.square(position[:, None] - position[None, :])  # (length, length)
        axis_sigma = ops.maximum(sigma[:, ndim - axis], 1e-3)[:, None, None]  # x is the last axis
        weights = ops.exp(-squared[None] / (2.0 * ops.square(axis_sigma)))
        weights = weights / ops.sum(weights, axis=-1, keepdims=True)  # (batch, length, length)
        moved = ops.moveaxis(blurred, axis, -1)
        moved_shape = static_shape(moved)
        flat = ops.reshape(moved, (shape[0], -1, length))
        flat = ops.matmul(flat, ops.transpose(weights, (0, 2, 1)))
        blurred = ops.moveaxis(ops.reshape(flat, moved_shape), -1, axis)
    return blurred


# ---------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------

_KEYS = ("matrix", "inverse_matrix", "grid_size", "intensity_scale", "intensity_shift")


def _check_transforms(transforms, ndim):
    if not isinstance(transforms, dict) or any(k not in transforms for k in _KEYS):
        keys = sorted(transforms) if isinstance(transforms, dict) else type(transforms).__name__
        raise UsageError(
            f"`transforms` must be the dict returned by sample_transforms with keys {_KEYS}. "
            f"Received: transforms keys={keys}")
    shape = static_shape(transforms["matrix"])
    if len(shape) != 3 or shape[1:] != (ndim + 1, ndim + 1):
        raise UsageError(
            f"`transforms` are for a different number of dimensions: expected matrices of shape "
            f"(batch, {ndim + 1}, {ndim + 1}) for {ndim}D data. Received: "
            f"transforms['matrix'].shape={shape}")
    return shape[0]


def _check_grid(transforms, grid_shape):
    """Compare the transform's grid with `grid_shape` where its value is known when traced."""
    import tensorflow as tf  # TF-specific: static value of a (possibly symbolic) tensor.

    value = tf.get_static_value(transforms["grid_size"])
    if value is not None and not np.array_equal(np.asarray(value)[0], grid_size_xyz(grid_shape)):
        raise UsageError(
            "`transforms` were sampled for a grid of size (x, y[, z]) = "
            f"{tuple(np.asarray(value)[0].tolist())}, not for these images. Received: images "
            f"spatial shape={grid_shape}")


def displacement_field(transforms, grid_shape):
    """The dense elastic displacement `(batch, *grid_shape, ndim)` (input index units), or None
    when the transforms have no elastic part."""
    if "elastic" not in transforms:
        return None
    return bspline_dense(transforms["elastic"], grid_shape)


def crop_transforms(transforms, centres):
    """Turn transforms sampled on a small *crop* grid into crops of larger images.

    The output grid keeps the crop's shape; its centre is moved onto `centres` of the input
    images, so `apply_to_images(images, crop_transforms(t, c), output_shape=crop_shape)` cuts an
    augmented crop around each centre out of each image (rotation and scaling act about the
    crop centre, the translation moves the crop's content as usual), and `apply_to_points`
    moves input landmarks into crop index units. Input and crop share the grid spacing.

    Args:
        transforms: dict from `sample_transforms(..., grid_shape=crop_shape, ...)`.
        centres: tensor `(batch, ndim)`. (x, y[, z]) input grid index of each crop's centre.

    Returns:
        a new dict: `matrix = T(o) @ matrix`, `inverse_matrix = inverse_matrix @ T(-o)`
        with `o = centres - crop centre`; other entries unchanged.
    """
    ndim = static_shape(transforms["matrix"])[-1] - 1
    batch = _check_transforms(transforms, ndim)
    centres = ops.cast(ops.convert_to_tensor(centres), "float32")
    if static_shape(centres) != (batch, ndim):
        raise UsageError(f"`centres` must have shape (batch, ndim) = ({batch}, {ndim}). "
                         f"Received: centres.shape={static_shape(centres)}")
    offset = centres - (transforms["grid_size"] - 1.0) / 2.0
    eye = ops.broadcast_to(np.eye(ndim, dtype=np.float32), (batch, ndim, ndim))
    shifted = dict(transforms)
    shifted["matrix"] = ops.matmul(_homogeneous(eye, offset), transforms["matrix"])
    shifted["inverse_matrix"] = ops.matmul(transforms["inverse_matrix"],
                                           _homogeneous(eye, -offset))
    return shifted


def apply_to_images(images, transforms, fill_value=0.0, intensity=True, output_shape=None):
    """Resample images through the sampled transforms (bi/trilinear, constant fill).

    Args:
        images: tensor `(batch, *spatial, channels)` on the grid the transforms were sampled for
            (with `output_shape`: any larger grid of the same spacing).
        transforms: dict from `sample_transforms` (or `crop_transforms`).
        fill_value: float. value outside the input grid (not changed by the intensity transform).
        intensity: bool. apply `x * intensity_scale + intensity_shift` to the image content, then
            the blur and noise when the transforms hold them; set it to False for masks or label
            images.
        output_shape: optional tuple of ints. spatial shape of the output, array order: the crop
            grid the transforms were sampled for (default: the images' own shape).

    Returns:
        augmented images `(batch, *output_shape, channels)` in the images' dtype.
    """
    images = ops.convert_to_tensor(images)
    shape, ndim = check_images(images)
    batch = _check_transforms(transforms, ndim)
    check_batch(shape[0], batch, "images", "transforms")
    output_shape = tuple(shape[1:-1]) if output_shape is None else check_grid_shape(
        output_shape, "output_shape")
    _check_grid(transforms, output_shape)
    resampled = resample(
        images, transforms["matrix"], displacement_field(transforms, output_shape),
        fill_value=fill_value,
        intensity_scale=transforms["intensity_scale"] if intensity else None,
        intensity_shift=transforms["intensity_shift"] if intensity else None,
        output_shape=output_shape)
    if not intensity or ("blur_sigma" not in transforms and "noise" not in transforms):
        return resampled
    dtype = resampled.dtype
    if "blur_sigma" in transforms:
        resampled = gaussian_blur(resampled, transforms["blur_sigma"])
    if "noise" in transforms:
        noise = transforms["noise"]
        if tuple(static_shape(noise)[1:-1]) != tuple(output_shape):
            raise UsageError(
                "the transforms' noise was drawn for a grid of shape "
                f"{tuple(static_shape(noise)[1:-1])}, the output has {tuple(output_shape)}: sample "
                "the transforms on the output (crop) grid")
        resampled = ops.cast(resampled, "float32") + ops.cast(noise, "float32")
    return ops.cast(resampled, dtype)


def apply_to_points(points, transforms, iterations=20, tolerance=0.05, return_residual=False):
    """Move landmarks with the exact inverse of the sampling map.

    Args:
        points: tensor `(batch, num_landmarks, ndim)`. (x, y[, z]) input grid index units; NaN =
            missing.
        transforms: dict from `sample_transforms`.
        iterations: int >= 1. fixed-point iterations for the elastic inverse (static; unused
            without elastic deformation).
        tolerance: float > 0. largest accepted residual |matrix @ p_out + u(p_out) - p_in| (index
            units, max over axes); a landmark whose inverse did not converge gets validity 0.
        return_residual: bool. also return the residual `(batch, num_landmarks)` (0 without elastic
            deformation, NaN for missing landmarks).

    Returns:
        `(moved_points, valid)`: moved points `(batch, num_landmarks, ndim)` on the output
        grid (NaN stays NaN) and validity `(batch, num_landmarks)` float32: 1 for finite landmarks
        inside the output field `[-0.5, size - 0.5)` per axis whose residual is within `tolerance`,
        else 0. With `return_residual`, `(moved_points, valid, residual)`.
    """
    if not (isinstance(iterations, (int, np.integer)) and not isinstance(iterations, bool)
            and iterations >= 1):
        raise UsageError(f"`iterations` must be an int >= 1. Received: iterations={iterations!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise UsageError(f"`tolerance` must be a number > 0. Received: tolerance={tolerance!r}")
    points = ops.cast(ops.convert_to_tensor(points), "float32")
    shape = static_shape(points)
    if not isinstance(transforms, dict) or "matrix" not in transforms:
        _check_transforms(transforms, 0)  # raises
    ndim = static_shape(transforms["matrix"])[-1] - 1
    check_points(points, ndim)
    batch = _check_transforms(transforms, ndim)
    check_batch(shape[0], batch, "points", "transforms")

    finite = ops.all(ops.isfinite(points), axis=-1)  # (batch, L)
    p_in = ops.where(finite[..., None], points, ops.zeros_like(points))
    inverse = transforms["inverse_matrix"]
    inv_linear, inv_offset = inverse[:, :ndim, :ndim], inverse[:, :ndim, ndim]

    def to_output(p):
        return ops.einsum("bij,blj->bli", inv_linear, p) + inv_offset[:, None, :]

    p_out = to_output(p_in)
    residual = ops.zeros(shape[:2])
    if "elastic" in transforms:
        control, grid_size = transforms["elastic"], transforms["grid_size"]
        p_out = ops.fori_loop(  # a static number of iterations (an XLA while loop)
            0, iterations, lambda _, p: to_output(p_in - bspline_at(control, p, grid_size)),
            p_out)
        matrix = transforms["matrix"]
        mapped = (ops.einsum("bij,blj->bli", matrix[:, :ndim, :ndim], p_out)
                  + matrix[:, None, :ndim, ndim] + bspline_at(control, p_out, grid_size))
        residual = ops.max(ops.abs(mapped - p_in), axis=-1)
    size = transforms["grid_size"][:, None, :]
    inside = ops.all(ops.logical_and(p_out >= -0.5, p_out < size - 0.5), axis=-1)
    valid = ops.logical_and(ops.logical_and(finite, inside), residual <= tolerance)
    nan = ops.full_like(p_out, float("nan"))
    moved = ops.where(finite[..., None], p_out, nan)
    valid = ops.cast(valid, "float32")
    if return_residual:
        return moved, valid, ops.where(finite, residual, nan[..., 0])
    return moved, valid


def device_stage(images, points, transforms, codec, fill_value=0.0, sigma=None,
                 return_points=False):
    """Augment a batch and render its targets: the work of the compiled training step.

    Args:
        images: tensor `(batch, *spatial, channels)` on the network input grid.
        points: tensor `(batch, num_landmarks, ndim)`. (x, y[, z]) grid index units, NaN = missing.
        transforms: dict from `sample_transforms` (same batch size and grid).
        codec: `keraslm.ops.heatmaps.HeatmapCodec` whose `input_shape` is the images' spatial shape.
        fill_value: float. image value outside the input grid.
        sigma: optional scalar or `(num_landmarks,)` tensor overriding `codec.sigma` (e.g. a
            learnable per-landmark sigma; gradients flow into it).
        return_points: bool. Also return the moved landmarks (to render targets elsewhere,
            e.g. with a learned sigma inside the gradient tape).

    Returns:
        `(augmented_images, heatmaps, weights)`: images as `apply_to_images`, target heatmaps
        `(batch, *codec.output_shape, num_landmarks)` and weights `(batch, num_landmarks)` float32:
        0 for missing landmarks, landmarks moved out of the field and non-converged elastic
        inverses; with `return_points` also the moved landmarks `(batch, num_landmarks, ndim)`
        in input grid index units.

    Examples:
    >>> codec = HeatmapCodec((64, 48), stride=1, sigma=2.0)
    >>> t = sample_transforms(seed_generator, 8, (64, 48), 1.0, AugmentationConfig())
    >>> x, heatmaps, weights = device_stage(images, points, t, codec)
    """
    images = ops.convert_to_tensor(images)
    points = ops.cast(ops.convert_to_tensor(points), "float32")
    shape, ndim = check_images(images)
    check_points(points, ndim)
    if tuple(codec.input_shape) != tuple(shape[1:-1]):
        raise UsageError(
            "`codec.input_shape` must equal the spatial shape of `images`. Received: "
            f"codec.input_shape={tuple(codec.input_shape)}, images.shape={shape}")
    augmented = apply_to_images(images, transforms, fill_value=fill_value)
    moved, valid = apply_to_points(points, transforms)
    heatmaps = codec.encode(moved, sigma=sigma)
    weights = valid * codec.weights(moved)
    if return_points:
        return augmented, heatmaps, weights, moved
    return augmented, heatmaps, weights


def choose_crop_landmarks(points, landmarks_per_image, seed=None):
    """Which landmarks to crop around: `(batch, landmarks_per_image)` int32 indices per image.

    Args:
        points: tensor `(batch, num_landmarks, ndim)`; NaN = missing (never chosen while enough
            annotated landmarks remain).
        landmarks_per_image: int in [1, num_landmarks]. all landmarks in order when equal to
            `num_landmarks`, else a random subset without repetition.
        seed: `keras.random.SeedGenerator` or int for the random subset.
    """
    batch, num_landmarks, _ = static_shape(points)
    if not (isinstance(landmarks_per_image, (int, np.integer)) and
            1 <= landmarks_per_image <= num_landmarks):
        raise UsageError(f"`landmarks_per_image` must be an int in [1, {num_landmarks}]. "
                         f"Received: landmarks_per_image={landmarks_per_image!r}")
    if landmarks_per_image == num_landmarks:
        return ops.broadcast_to(ops.arange(num_landmarks, dtype="int32"),
                                (batch, num_landmarks))
    finite = ops.all(ops.isfinite(points), axis=-1)
    keys = keras.random.uniform((batch, num_landmarks), seed=seed) + ops.where(finite, 0.0, 2.0)
    return ops.cast(ops.argsort(keys, axis=-1)[:, :landmarks_per_image], "int32")


def crop_stage(images, points, landmark_index, transforms, codec, fill_value=0.0,
               targets="own"):
    """The local (refinement) stage's device work: augmented crops around chosen landmarks of
    larger grid images, with the target heatmaps of every landmark.

    Crop `b * crops_per_image + j` belongs to image `b` and is centred on its landmark
    `landmark_index[b, j]` (the image centre when that one is missing) before augmentation, so
    the sampled translation is the offset a coarse estimate would have. At prediction the local
    stage reads channel k of the crop around the estimate of landmark k only, which is what
    "own" trains. ("all" makes the targets far sparser - a 64x64 crop holds 1-3 of 19 peaks - and
    keeps the network near the all-zero output much longer; docs/guides/training.md, "Design
    notes".)

    Args:
        images: tensor `(batch, *spatial, channels)`. whole images on the fine grid.
        points: tensor `(batch, num_landmarks, ndim)`. (x, y[, z]) fine grid index, NaN = missing.
        landmark_index: int tensor `(batch, crops_per_image)` from `choose_crop_landmarks`.
        transforms: dict from `sample_transforms` on the crop grid (`codec.input_shape`) for
            `batch * crops_per_image` crops.
        codec: `HeatmapCodec` of the crop grid.
        targets: "own" (default): only the heatmap channel of the crop's own landmark has weight 1
            (it must peak there and nowhere else in the crop, also not on neighbouring landmarks);
            "all": every annotated landmark is a target in every crop (those outside get the part of
            their Gaussian that reaches in, mostly zeros).

    Returns:
        `(crops, heatmaps, weights, crop_points)`: crops `(n, *crop_shape, channels)`,
        heatmaps `(n, *codec.output_shape, num_landmarks)`, weights `(n, num_landmarks)` (0 for
        missing landmarks and non-converged elastic inverses, and with "own" for all but the crop's
        own landmark) and the landmarks in crop index units `(n, num_landmarks, ndim)`, with
        `n = batch * crops_per_image`.
    """
    if targets not in ("own", "all"):
        raise UsageError(f"`targets` must be 'own' or 'all'. Received: targets={targets!r}")
    images = ops.convert_to_tensor(images)
    points = ops.cast(ops.convert_to_tensor(points), "float32")
    shape, ndim = check_images(images)
    check_points(points, ndim)
    batch, num_landmarks = static_shape(points)[:2]
    crops_per_image = static_shape(landmark_index)[1]
    n = batch * crops_per_image
    crop_shape = tuple(codec.input_shape)
    centre = (grid_size_xyz(shape[1:-1]) - 1.0) / 2.0
    chosen = ops.take_along_axis(points, ops.cast(landmark_index, "int32")[..., None], axis=1)
    chosen = ops.where(ops.isfinite(chosen), chosen, ops.zeros_like(chosen) + centre)
    centres = ops.reshape(chosen, (n, ndim))
    repeated_images = ops.repeat(images, crops_per_image, axis=0)
    repeated_points = ops.repeat(points, crops_per_image, axis=0)
    shifted = crop_transforms(transforms, centres)
    crops = apply_to_images(repeated_images, shifted, fill_value=fill_value,
                            output_shape=crop_shape)
    moved, _, residual = apply_to_points(repeated_points, shifted, return_residual=True)
    finite = ops.all(ops.isfinite(repeated_points), axis=-1)
    converged = ops.logical_and(finite, ops.where(finite, residual, 0.0) <= 0.05)
    weights = ops.cast(converged, "float32")
    if targets == "own":
        own = ops.one_hot(ops.reshape(ops.cast(landmark_index, "int32"), (n,)), num_landmarks)
        weights = weights * own
    return crops, codec.encode(moved), weights, moved


def extract_crops(images, centres, crop_shape, fill_value=0.0):
    """Plain (un-augmented) crops around points: what the local stage sees at prediction time.

    Args:
        images: tensor `(batch, *spatial, channels)`.
        centres: tensor `(batch, num_crops, ndim)`. (x, y[, z]) grid index of the crop centres
            (finite; sub-pixel centres are interpolated).
        crop_shape: tuple of ints. array order.

    Returns:
        `(batch * num_crops, *crop_shape, channels)`; crop `b * num_crops + k` is centred on
        `centres[b, k]`. Map crop index points back with `crop_to_grid`.
    """
    images = ops.convert_to_tensor(images)
    shape, ndim = check_images(images)
    crop_shape = check_grid_shape(crop_shape, "crop_shape")
    centres = ops.cast(ops.convert_to_tensor(centres), "float32")
    batch, num_crops = static_shape(centres)[:2]
    n = batch * num_crops
    offset = ops.reshape(centres, (n, ndim)) - (grid_size_xyz(crop_shape) - 1.0) / 2.0
    eye = ops.broadcast_to(np.eye(ndim, dtype=np.float32), (n, ndim, ndim))
    return resample(ops.repeat(images, num_crops, axis=0), _homogeneous(eye, offset),
                    fill_value=fill_value, output_shape=crop_shape)


def crop_to_grid(points_crop, centres, crop_shape):
    """Crop index points `(batch, ..., ndim)` of crops from `extract_crops` -> the grid index of
    the images they were cut from; `centres` broadcasts against `points_crop`."""
    return (ops.cast(points_crop, "float32") + ops.cast(centres, "float32")
            - (grid_size_xyz(check_grid_shape(crop_shape, "crop_shape")) - 1.0) / 2.0)
