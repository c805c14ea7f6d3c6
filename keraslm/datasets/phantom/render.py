"""Rendering of the synthetic hand phantoms: `render_phantom` samples a hand
(`keraslm.datasets.phantom.anatomy`) and draws it on the pixel/voxel grid of an image.

Every pixel/voxel centre `(x, y[, z])` is mapped through the image geometry
(`keraslm.io.Image.index_to_physical`) into physical space and the hand is rendered there, so
landmarks and pixels agree for any spacing, origin and direction. In the image the fingers
point towards -y (up) and the thumb towards +x.

2D images are radiograph-like: the projected thickness of each bone through a bright cortical
shell and a darker medulla, summed over bones and soft tissue like X-ray attenuation. 3D
volumes are MR-like: bright bone with a brighter marrow core in grey soft tissue. A scanner
model follows (smooth intensity gradient, point spread, gain and offset, noise, 12-bit
quantisation).
"""
import math

import numpy as np

from keraslm.datasets.phantom.anatomy import (
    LANDMARKS,
    landmarks_inside,
    sample_hand,
    sample_pose,
)
from keraslm.errors import DatasetError
from keraslm.io import Image

_MAX_POSE_TRIES = 100
_LANDMARK_MARGIN_INDEX = 2.0  # Landmarks lie at least this many pixels inside the image.


def check_float(name, value, low, high):
    """`value` as a float if it is a number in [low, high]; else DatasetError naming `name`."""
    valid = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not valid or not (low <= float(value) <= high):
        raise DatasetError(
            f"`{name}` must be a number in [{low}, {high}]. Received: {name}={value!r}"
        )
    return float(value)


def _physical_grid(geometry):
    """Physical mm (LPS) of every pixel/voxel centre, shape `(*array.shape, ndim)`."""
    ndim = geometry.ndim
    matrix = geometry.index_to_physical_matrix
    points_mm = geometry.origin.reshape((1,) * ndim + (ndim,))
    for axis in range(ndim):  # Index axis `axis` is array axis `ndim - 1 - axis`.
        shape = [1] * ndim + [1]
        shape[ndim - 1 - axis] = geometry.size[axis]
        steps = np.arange(geometry.size[axis], dtype=np.float64).reshape(shape)
        points_mm = points_mm + steps * matrix[:, axis]
    return points_mm


def _capsule_crops(geometry, capsules):
    """For each capsule that touches the image: `(slices, distance, radius)` over the index box
    around it (slices in array order; distance to its axis and its radius there, mm)."""
    grid_mm = _physical_grid(geometry)
    to_index = np.linalg.inv(geometry.index_to_physical_matrix)
    size = np.asarray(geometry.size)
    for capsule in capsules:
        ends_index = (np.stack([capsule.start, capsule.end]) - geometry.origin) @ to_index.T
        pad = max(capsule.radii) / geometry.spacing + 2.0  # Direction is orthonormal.
        low = np.maximum(np.floor(ends_index.min(axis=0) - pad), 0).astype(int)
        high = np.minimum(np.ceil(ends_index.max(axis=0) + pad) + 1, size).astype(int)
        if np.any(high <= low):
            continue
        slices = tuple(slice(low[axis], high[axis]) for axis in reversed(range(geometry.ndim)))
        yield (slices, *_distance_and_radius(grid_mm[slices], capsule))


def _distance_and_radius(points_mm, capsule):
    """Distance of each point to the capsule axis and the capsule radius there."""
    axis = capsule.end - capsule.start
    offset = points_mm - capsule.start
    length2 = float(axis @ axis)
    t = np.clip(offset @ axis / length2, 0.0, 1.0) if length2 > 0 else np.zeros(offset.shape[:-1])
    distance = np.sqrt(np.sum((offset - t[..., np.newaxis] * axis) ** 2, axis=-1))
    r_start, r_mid, r_end = capsule.radii
    p = capsule.power
    radius = r_mid + (r_start - r_mid) * (1.0 - t) ** p + (r_end - r_mid) * t**p
    return distance, radius


def _chord(distance, radius):
    """Length (mm) of the chord through a circle of `radius` at `distance` from its centre."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - distance * distance, 0.0))


def _soft_inside(distance, radius, edge):
    """1 inside, 0 outside, linear over `edge` mm across the surface (partial volume)."""
    return np.clip(0.5 + (radius - distance) / edge, 0.0, 1.0)


def _smooth(array, sigmas):
    """Separable Gaussian smoothing; `sigmas` in pixels per array axis; edges replicated."""
    for axis, sigma in enumerate(sigmas):
        radius = int(math.ceil(3.0 * sigma))
        if radius == 0:
            continue
        weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        weights /= weights.sum()
        pad = [(0, 0)] * array.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(array, pad, mode="edge")
        length = array.shape[axis]
        result = np.zeros_like(array)
        for shift, weight in enumerate(weights):
            result += weight * np.take(padded, np.arange(shift, shift + length), axis=axis)
        array = result
    return array


def _render_2d(geometry, bones, tissue):
    """Radiograph-like signal in [0, 1): 1 - exp(-attenuation) of projected tissue and bone."""
    tissue_mm = np.zeros(geometry.array.shape)
    bone_attenuation = np.zeros(geometry.array.shape)
    for slices, distance, radius in _capsule_crops(geometry, tissue):
        np.maximum(tissue_mm[slices], _chord(distance, radius), out=tissue_mm[slices])
    for slices, distance, radius in _capsule_crops(geometry, bones):
        outer = _chord(distance, radius)
        inner = _chord(distance, 0.6 * radius)  # Medulla inside the cortical shell.
        bone_attenuation[slices] += 0.15 * (outer - inner) + 0.01 * inner
    return 1.0 - np.exp(-(0.018 * tissue_mm + bone_attenuation))


def _render_3d(geometry, bones, tissue):
    """MR-like signal: grey soft tissue, bright bone with a brighter marrow (fat) core."""
    edge = 0.75 * float(np.mean(geometry.spacing))
    tissue_fraction = np.zeros(geometry.array.shape)
    bone_fraction = np.zeros(geometry.array.shape)
    marrow_fraction = np.zeros(geometry.array.shape)
    for slices, distance, radius in _capsule_crops(geometry, tissue):
        inside = _soft_inside(distance, radius, edge)
        np.maximum(tissue_fraction[slices], inside, out=tissue_fraction[slices])
    for slices, distance, radius in _capsule_crops(geometry, bones):
        outer = _soft_inside(distance, radius, edge)
        inner = _soft_inside(distance, 0.7 * radius, edge)
        np.maximum(bone_fraction[slices], outer, out=bone_fraction[slices])
        np.maximum(marrow_fraction[slices], inner, out=marrow_fraction[slices])
    return 0.35 * tissue_fraction + 0.4 * bone_fraction + 0.25 * marrow_fraction


def render_phantom(rng, geometry, noise=0.02, max_rotation_deg=15.0):
    """Samples one hand and renders it on the pixel/voxel grid of `geometry`.

    The hand is centred on the image centre with a random pose; it is re-sampled until every
    landmark lies at least 2 pixels inside the image.

    Args:
        rng: np.random.Generator. Source of all randomness (anatomy, pose, intensities, noise).
        geometry: Image. Grid and physical geometry (its array's shape is used, not its values);
            2D gives a radiograph with `PHANTOM2D_LANDMARKS`, 3D a volume with
            `PHANTOM3D_LANDMARKS`. The direction must be orthonormal.
        noise: float. Standard deviation of the Gaussian noise, as a fraction of the full
            intensity range (scaled per image by a random factor in [0.5, 1.5]).
        max_rotation_deg: float. Largest in-plane rotation of the hand, degrees.

    Returns:
        (image, points_mm): Image with a uint16 array (12-bit values) and the geometry of
        `geometry`; np.ndarray `(num_landmarks, ndim)` of landmarks in physical mm (LPS).

    Raises:
        DatasetError: invalid arguments, or the hand does not fit into the image's field of
            view.

    Examples:
        >>> geometry = Image(np.zeros((128, 128), np.uint16), spacing=(1.8, 2.0))
        >>> image, points_mm = render_phantom(np.random.default_rng(0), geometry)
        >>> points_mm.shape
        (37, 2)
    """
    if not isinstance(geometry, Image):
        raise DatasetError(f"`geometry` must be a keraslm.io.Image. Received: {geometry!r}")
    if not np.allclose(geometry.direction.T @ geometry.direction, np.eye(geometry.ndim), atol=1e-6):
        raise DatasetError(
            f"`geometry.direction` must be orthonormal. Received: {geometry.direction.tolist()}"
        )
    noise = check_float("noise", noise, 0.0, 1.0)
    max_rotation_deg = check_float("max_rotation_deg", max_rotation_deg, 0.0, 30.0)
    ndim = geometry.ndim
    names = LANDMARKS[ndim]
    for _ in range(_MAX_POSE_TRIES):
        hand = sample_hand(rng)
        if hand is None:
            continue
        points, bones, tissue = hand
        hand_to_physical, scale = sample_pose(rng, geometry, max_rotation_deg)
        points_mm = hand_to_physical(np.stack([points[name] for name in names]))
        if landmarks_inside(geometry, points_mm, _LANDMARK_MARGIN_INDEX):
            break
    else:
        raise DatasetError(
            f"the phantom hand does not fit into an image of size {geometry.size} with spacing "
            f"{geometry.spacing.tolist()} mm; use a larger field of view (image_size x spacing)"
        )
    bones = [capsule.moved(hand_to_physical, scale) for capsule in bones]
    tissue = [capsule.moved(hand_to_physical, scale) for capsule in tissue]
    signal = (_render_2d if ndim == 2 else _render_3d)(geometry, bones, tissue)

    # Scanner: smooth intensity gradient (heel effect / coil bias), point spread, gain and
    # offset, noise, 12-bit quantisation.
    size = np.asarray(geometry.size, dtype=np.float64)
    gradient = rng.normal(0.0, 1.0, ndim)
    gradient *= rng.uniform(0.0, 0.15) / np.linalg.norm(gradient)
    bias = 1.0
    for axis in range(ndim):
        shape = [1] * ndim
        shape[ndim - 1 - axis] = geometry.size[axis]
        ramp = np.arange(geometry.size[axis]) / size[axis] - 0.5
        bias = bias + gradient[axis] * ramp.reshape(shape)
    signal = _smooth(signal * bias, [rng.uniform(0.4, 0.9)] * ndim)
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(0.03, 0.1)
    values = offset + 0.75 * gain * signal
    values = values + rng.normal(0.0, noise * rng.uniform(0.5, 1.5), values.shape)
    pixels = np.clip(np.round(values * 4095.0), 0, 4095).astype(np.uint16)
    return geometry.with_array(pixels), points_mm


__all__ = ["check_float", "render_phantom"]
