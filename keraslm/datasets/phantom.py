"""Synthetic hand phantoms: keraslm's embedded default datasets, generated without a download.

`make_phantom(root, ndim=2)` writes hand-like 2D radiographs (37 landmarks; PNG and DICOM) or
`ndim=3` hand volumes (28 landmarks; NIfTI and DICOM series) with landmarks in physical mm, and
returns the folder as a `keraslm.data.LandmarkDataset`.

Coordinate spaces:

- hand frame (mm): `(u, v, w)`, u across the hand towards the thumb, v along the fingers
  (distal), w out of the back of the hand; the wrist (distal end of radius and ulna) is near
  the origin. The anatomy is sampled here.
- physical (mm, LPS): a pose (scale, rotation, translation) places the hand in the physical
  space of an image, centred on the image centre. Landmarks are exact physical points.
- index `(x, y[, z])`: every pixel/voxel centre is mapped through the image geometry
  (`keraslm.io.Image.index_to_physical`) into physical space and the hand is rendered there,
  so landmarks and pixels agree for any spacing, origin and direction. In the image the
  fingers point towards -y (up) and the thumb towards +x.

Bones are tapered capsules (segments with a radius that widens towards the bone ends): in 2D
their projected thickness through a bright cortical shell and a darker medulla, summed over
bones and soft tissue like X-ray attenuation; in 3D MR-like (bright bone with a brighter
marrow core in grey soft tissue). All phalanges of a kind share their shape and neighbouring
fingers never cross, so all fingertips (and all joints) look alike: only the spatial
configuration tells them apart.
"""
import json
import logging
import math
import os
import time

import numpy as np

from keraslm.errors import DatasetError
from keraslm.io import (
    Image,
    LandmarkTable,
    write_dicom,
    write_dicom_series,
    write_landmarks,
    write_nifti,
    write_png,
)
from keraslm.files import atomic_folder

_log = logging.getLogger(__name__)

_FINGERS = ("finger2", "finger3", "finger4", "finger5")
_FINGER_POINTS = ("cmc", "mcp", "pip", "dip", "tip")  # Metacarpal base, joints, tip.
_THUMB_POINTS = ("cmc", "mcp", "ip", "tip")
_CARPALS = (
    "scaphoid",
    "lunate",
    "triquetrum",
    "pisiform",
    "trapezium",
    "trapezoid",
    "capitate",
    "hamate",
)

#: Landmark names of the 2D phantom (37): thumb and finger joints and tips, metacarpal bases,
#: carpal bone centres, radius and ulna.
PHANTOM2D_LANDMARKS = (
    *(f"thumb_{point}" for point in _THUMB_POINTS),
    *(f"{finger}_{point}" for finger in _FINGERS for point in _FINGER_POINTS),
    *(f"{carpal}_center" for carpal in _CARPALS),
    "radius_styloid",
    "radius_ulnar_notch",
    "radius_shaft",
    "ulna_styloid",
    "ulna_shaft",
)

#: Landmark names of the 3D phantom (28): thumb and finger joints and tips, metacarpal bases and
#: four wrist points.
PHANTOM3D_LANDMARKS = (
    *(f"thumb_{point}" for point in _THUMB_POINTS),
    *(f"{finger}_{point}" for finger in _FINGERS for point in _FINGER_POINTS),
    "scaphoid_center",
    "capitate_center",
    "radius_styloid",
    "ulna_styloid",
)

_LANDMARKS = {2: PHANTOM2D_LANDMARKS, 3: PHANTOM3D_LANDMARKS}

#: Default size `(x, y[, z])` in pixels/voxels and the spacing (mm) at that size; other sizes
#: keep the field of view (spacing scales inversely with the size).
DEFAULT_IMAGE_SIZE = {2: (256, 256), 3: (64, 96, 32)}
DEFAULT_SPACING = {2: (0.9, 1.0), 3: (2.5, 2.2, 3.0)}
DEFAULT_NUM_IMAGES = {2: 100, 3: 40}

# Increase when the generated data changes, so cached folders are not reused.
_PHANTOM_VERSION = 1
_MAX_POSE_TRIES = 100
_LANDMARK_MARGIN_INDEX = 2.0  # Landmarks lie at least this many pixels inside the image.

# ------------------------------------------------------------------------------ hand anatomy
# Mean anatomy in the hand frame (mm), roughly a child's hand as in bone-age radiographs.
# Finger rays: metacarpal base (u, v), ray angle (deg, towards the thumb), bone lengths
# (metacarpal, proximal, middle, distal phalanx).
_FINGER_RAYS = {
    "finger2": ((8.0, 27.0), 7.0, (50.0, 30.0, 18.0, 14.0)),
    "finger3": ((0.0, 28.0), 0.0, (48.0, 33.0, 21.0, 15.0)),
    "finger4": ((-8.0, 27.0), -6.0, (43.0, 31.0, 20.0, 15.0)),
    "finger5": ((-15.0, 24.0), -13.0, (40.0, 25.0, 15.0, 13.0)),
}
_THUMB_RAY = ((20.0, 23.0), 38.0, (32.0, 23.0, 18.0))  # Metacarpal, proximal, distal.
# Bone radii (base end, shaft, head end) by kind; shared by all fingers and the thumb.
_BONE_RADII = {
    "metacarpal": (3.6, 2.6, 3.8),
    "proximal": (3.4, 2.3, 3.0),
    "middle": (2.9, 2.0, 2.6),
    "distal": (2.5, 1.6, 2.2),
}
_JOINT_GAP = 1.2  # Half the joint space (cartilage), mm.
_MIN_FINGER_GAP = 9.0  # Least distance of neighbouring fingers' joints and tips, mm.
_END_INSET = 0.5  # Metacarpal bases and tips lie this far inside the bone end, mm.
# Carpal bones: centre (u, v), long-axis angle (deg from u), half-length, radius.
_CARPAL_SHAPES = {
    "scaphoid": ((11.0, 8.0), 60.0, 3.0, 4.0),
    "lunate": ((1.0, 7.0), 90.0, 0.5, 4.2),
    "triquetrum": ((-8.5, 9.0), 20.0, 1.0, 3.8),
    "pisiform": ((-11.5, 12.5), 0.0, 0.0, 2.8),
    "trapezium": ((16.5, 18.0), 30.0, 1.5, 4.2),
    "trapezoid": ((8.5, 20.0), 90.0, 0.8, 3.4),
    "capitate": ((0.0, 19.0), 90.0, 2.5, 4.5),
    "hamate": ((-9.0, 19.0), 80.0, 1.5, 4.3),
}
# Forearm bones: shaft axis (u), distal-end centre (v), radii (proximal, shaft, distal end).
_RADIUS = (8.0, -8.0, (5.5, 5.5, 8.0))
_ULNA = (-14.0, -8.0, (4.0, 4.0, 5.0))
_FOREARM_POINTS = {
    "radius_styloid": (14.0, -3.0),
    "radius_ulnar_notch": (1.0, -7.0),
    "radius_shaft": (8.0, -35.0),
    "ulna_styloid": (-17.0, -5.0),
    "ulna_shaft": (-14.0, -35.0),
}
# Hand-frame point placed at the image centre (before the random translation).
_HAND_CENTRE = {2: (13.5, 58.0, 0.0), 3: (14.0, 66.0, 0.0)}


class _Capsule:
    """A segment `start -> end` with radius `r(t) = mid + (r_start - mid) (1 - t)^p +
    (r_end - mid) t^p` along it (p = 1: linear taper; p > 1: widened ends)."""

    __slots__ = ("start", "end", "radii", "power")

    def __init__(self, start, end, radii, power):
        self.start = np.asarray(start, dtype=np.float64)
        self.end = np.asarray(end, dtype=np.float64)
        self.radii = tuple(float(r) for r in radii)
        self.power = power

    def moved(self, transform, scale):
        """The capsule under the point map `transform`, radii multiplied by `scale`."""
        return _Capsule(
            transform(self.start), transform(self.end), [r * scale for r in self.radii], self.power
        )


def _direction(theta, phi):
    """Unit vector in the hand frame: `theta` in-plane angle from v towards u, `phi` flexion
    towards the palm (-w); radians."""
    return np.array(
        [math.sin(theta) * math.cos(phi), math.cos(theta) * math.cos(phi), -math.sin(phi)]
    )


def _ray(rng, base, angle_deg, lengths, flexion_deg):
    """Joint positions of one ray (base, joints..., tip): sampled bone lengths, sideways
    deviation and flexion at each joint; `angle_deg` is the in-plane angle of the first bone."""
    theta = math.radians(angle_deg)
    phi = 0.0
    points = [np.array([base[0], base[1], 0.0])]
    for index, length in enumerate(lengths):
        length = length * rng.uniform(0.93, 1.07)
        points.append(points[-1] + length * _direction(theta, phi))
        theta += math.radians(rng.uniform(-2.0, 2.0))  # Sideways deviation at the joint.
        phi += math.radians(rng.uniform(0.0, flexion_deg[min(index, len(flexion_deg) - 1)]))
    return points


def _bone(proximal, distal, kind, proximal_is_end=False, distal_is_end=False):
    """A bone between two landmarks: joints leave a gap; bases and tips lie inside the bone."""
    axis = (distal - proximal) / np.linalg.norm(distal - proximal)
    r_start, r_mid, r_end = _BONE_RADII[kind]
    start_offset = r_start - _END_INSET if proximal_is_end else _JOINT_GAP + r_start
    end_offset = r_end - _END_INSET if distal_is_end else _JOINT_GAP + r_end
    start, end = proximal + start_offset * axis, distal - end_offset * axis
    return _Capsule(start, end, _BONE_RADII[kind], 4)


def _sample_hand(rng):
    """Samples one hand in the hand frame (mm).

    Returns:
        (points, bones, tissue): dict name -> (3,) landmark; lists of `_Capsule` for bones and
        for the soft-tissue envelope. None if neighbouring fingers came too close (the caller
        samples again).
    """
    points, bones, tissue = {}, [], []
    kinds = ("metacarpal", "proximal", "middle", "distal")
    spread = rng.uniform(0.6, 1.6)  # Fingers held together ... fanned out.
    rays = {}
    for finger, (base, angle, lengths) in _FINGER_RAYS.items():
        base = np.asarray(base) + rng.normal(0.0, 0.7, 2)
        angle = angle * spread + rng.uniform(-2.5, 2.5)
        rays[finger] = _ray(rng, base, angle, lengths, flexion_deg=(10.0, 12.0, 8.0))
    for first, second in zip(_FINGERS[:-1], _FINGERS[1:]):
        for joint in (2, 3, 4):  # PIP, DIP, tip: fingers must not cross in the hand plane.
            if np.linalg.norm(rays[first][joint][:2] - rays[second][joint][:2]) < _MIN_FINGER_GAP:
                return None
    for finger, ray in rays.items():
        for name, point in zip(_FINGER_POINTS, ray):
            points[f"{finger}_{name}"] = point
        for index, kind in enumerate(kinds):
            bones.append(_bone(ray[index], ray[index + 1], kind, index == 0, index == 3))
        tip = ray[-1] + 2.0 * (ray[-1] - ray[-2]) / np.linalg.norm(ray[-1] - ray[-2])
        tissue.append(_Capsule(ray[1], tip, (8.0, 7.0, 6.0), 1))
    base, angle, lengths = _THUMB_RAY
    base = np.asarray(base) + rng.normal(0.0, 0.7, 2)
    thumb = _ray(rng, base, angle + rng.uniform(-8.0, 8.0), lengths, flexion_deg=(12.0, 10.0))
    for name, point in zip(_THUMB_POINTS, thumb):
        points[f"thumb_{name}"] = point
    for index, kind in enumerate(("metacarpal", "proximal", "distal")):
        bones.append(_bone(thumb[index], thumb[index + 1], kind, index == 0, index == 2))
    tip = thumb[-1] + 2.0 * (thumb[-1] - thumb[-2]) / np.linalg.norm(thumb[-1] - thumb[-2])
    tissue.append(_Capsule(thumb[1], tip, (9.0, 7.5, 6.5), 1))

    for carpal, (centre, angle, half_length, radius) in _CARPAL_SHAPES.items():
        centre = np.array([*centre, 0.0])
        centre[:2] += rng.normal(0.0, 0.5, 2)
        angle = math.radians(angle + rng.uniform(-10.0, 10.0))
        half = half_length * rng.uniform(0.9, 1.1) * np.array([math.cos(angle), math.sin(angle), 0])
        radius = radius * rng.uniform(0.93, 1.07)
        bones.append(_Capsule(centre - half, centre + half, (radius, radius, radius), 1))
        points[f"{carpal}_center"] = centre

    for u, v_end, radii in (_RADIUS, _ULNA):
        bones.append(_Capsule([u, -150.0, 0.0], [u, v_end, 0.0], radii, 6))
    for name, (u, v) in _FOREARM_POINTS.items():
        points[name] = np.array([u, v, 0.0])

    # Soft tissue: palm, thenar and hypothenar eminences, forearm.
    wrist = np.array([0.0, 5.0, 0.0])
    for finger in _FINGERS:
        tissue.append(_Capsule(wrist, points[f"{finger}_mcp"], (12.0, 10.5, 9.0), 1))
    tissue.append(_Capsule(points["finger2_mcp"], points["finger5_mcp"], (9.0, 9.0, 9.0), 1))
    tissue.append(_Capsule([12.0, 8.0, 0.0], points["thumb_mcp"], (12.0, 10.0, 8.0), 1))
    tissue.append(_Capsule([-10.0, 10.0, 0.0], points["finger5_mcp"], (11.0, 10.0, 9.0), 1))
    tissue.append(_Capsule([-3.0, -150.0, 0.0], [-3.0, 2.0, 0.0], (24.0, 24.0, 23.0), 1))
    return points, bones, tissue


def _rotation(axis, angle):
    """3x3 rotation matrix about unit `axis` by `angle` (radians), Rodrigues' formula."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * (cross @ cross)


def _pose(rng, geometry, max_rotation_deg):
    """Samples a pose; returns `(hand_to_physical, scale)`, hand_to_physical mapping `(..., 3)`
    hand-frame mm to `(..., ndim)` physical mm of `geometry`."""
    ndim = geometry.ndim
    scale = rng.uniform(0.9, 1.1)
    rotation = _rotation([0, 0, 1], math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg)))
    if ndim == 3:  # Small tilts out of the image plane.
        rotation = _rotation([1, 0, 0], math.radians(rng.uniform(-5, 5))) @ rotation
        rotation = _rotation([0, 1, 0], math.radians(rng.uniform(-5, 5))) @ rotation
    translation = rng.uniform(-10.0, 10.0, 3) * np.array([1.0, 1.0, 0.5])
    # Hand axes -> index axes: u -> +x, v -> -y (fingers up), w -> -z (a proper rotation).
    to_index_axes = np.diag([1.0, -1.0, -1.0])[:ndim]
    linear = geometry.direction @ to_index_axes @ rotation * scale
    size = np.asarray(geometry.size, dtype=np.float64)
    centre_mm = geometry.index_to_physical((size - 1.0) / 2.0)
    shift = centre_mm + geometry.direction @ to_index_axes @ translation
    hand_centre = np.asarray(_HAND_CENTRE[ndim])

    def hand_to_physical(points_hand):
        return (np.asarray(points_hand) - hand_centre) @ linear.T + shift

    return hand_to_physical, scale


def _inside(geometry, points_mm, margin):
    points_index = geometry.physical_to_index(points_mm)
    size = np.asarray(geometry.size, dtype=np.float64)
    return bool(np.all(points_index >= margin) and np.all(points_index <= size - 1 - margin))


# ---------------------------------------------------------------------------------- rendering


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
    noise = _check_float("noise", noise, 0.0, 1.0)
    max_rotation_deg = _check_float("max_rotation_deg", max_rotation_deg, 0.0, 30.0)
    ndim = geometry.ndim
    names = _LANDMARKS[ndim]
    for _ in range(_MAX_POSE_TRIES):
        hand = _sample_hand(rng)
        if hand is None:
            continue
        points, bones, tissue = hand
        hand_to_physical, scale = _pose(rng, geometry, max_rotation_deg)
        points_mm = hand_to_physical(np.stack([points[name] for name in names]))
        if _inside(geometry, points_mm, _LANDMARK_MARGIN_INDEX):
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


# -------------------------------------------------------------------------------- the dataset


def _geometry(ndim, image_size, spacing, kind):
    """Geometry of one file kind: "png" (origin 0, identity: what a PNG reads back as),
    "dicom2d" (centred origin), "volume" (non-identity orientation, shared by NIfTI and the
    DICOM series)."""
    shape = tuple(reversed(image_size))
    placeholder = np.broadcast_to(np.zeros((), np.uint16), shape)
    extent = np.asarray(spacing) * (np.asarray(image_size) - 1)
    if kind == "png":
        return Image(placeholder, spacing=spacing)
    if kind == "dicom2d":
        return Image(placeholder, spacing=spacing, origin=-extent / 2.0)
    # A rotation by 20 degrees about a tilted axis; the third column is the cross product of the
    # first two, as DICOM readers compute it.
    direction = _rotation([0.3, -0.2, 1.0], math.radians(20.0))
    direction[:, 2] = np.cross(direction[:, 0], direction[:, 1])
    centre_mm = np.array([12.5, -30.0, 45.0])
    origin = centre_mm - direction @ (extent / 2.0)
    return Image(placeholder, spacing=spacing, origin=origin, direction=direction)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_float(name, value, low, high):
    valid = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not valid or not (low <= float(value) <= high):
        raise DatasetError(
            f"`{name}` must be a number in [{low}, {high}]. Received: {name}={value!r}"
        )
    return float(value)


def _generator_config(ndim, num_images, seed, image_size, spacing, noise, max_rotation_deg):
    """Validates the arguments; returns the JSON-ready `generator` section of dataset.json."""
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise DatasetError(f"`ndim` must be 2 or 3. Received: ndim={ndim!r}")
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES[ndim]
    num_images = _check_int("num_images", num_images, 1)
    seed = _check_int("seed", seed, 0)
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE[ndim]
    sizes = [image_size] * ndim if isinstance(image_size, (int, np.integer)) else image_size
    try:
        sizes = [_check_int("image_size", size, 16) for size in sizes]
    except (DatasetError, TypeError):
        sizes = None
    if sizes is None or len(sizes) != ndim:
        raise DatasetError(
            f"`image_size` must be an integer >= 16 or {ndim} of them "
            f"(x, y{', z' if ndim == 3 else ''}). Received: image_size={image_size!r}"
        )
    if spacing is None:
        reference = np.asarray(DEFAULT_IMAGE_SIZE[ndim], dtype=np.float64)
        spacing = np.asarray(DEFAULT_SPACING[ndim]) * reference / np.asarray(sizes)
        spacing = [round(float(s), 6) for s in spacing]
    else:
        values = [spacing] * ndim if np.ndim(spacing) == 0 else spacing
        try:
            values = [_check_float("spacing", value, 1e-6, 1e6) for value in values]
        except (DatasetError, TypeError):
            values = None
        if values is None or len(values) != ndim:
            raise DatasetError(
                f"`spacing` must be a positive number or {ndim} of them (mm along x, y"
                f"{', z' if ndim == 3 else ''}). Received: spacing={spacing!r}"
            )
        spacing = values
    return {
        "version": _PHANTOM_VERSION,
        "ndim": ndim,
        "num_images": num_images,
        "seed": seed,
        "image_size": sizes,
        "spacing": spacing,
        "noise": _check_float("noise", noise, 0.0, 1.0),
        "max_rotation_deg": _check_float("max_rotation_deg", max_rotation_deg, 0.0, 30.0),
    }


def _write_dataset(folder, config):
    """Writes images, landmarks.csv and dataset.json of `config` into `folder`."""
    ndim, num_images = config["ndim"], config["num_images"]
    name = f"phantom{ndim}d"
    digits = max(3, len(str(num_images - 1)))
    kinds = ("png", "dicom2d") if ndim == 2 else ("volume", "volume")
    geometries = [_geometry(ndim, config["image_size"], config["spacing"], kind) for kind in kinds]
    os.makedirs(os.path.join(folder, "images"))
    ids, points = [], []
    for index in range(num_images):
        rng = np.random.default_rng([config["seed"], index])
        image, points_mm = render_phantom(
            rng, geometries[index % 2], config["noise"], config["max_rotation_deg"]
        )
        stem = f"images/{name}_{index:0{digits}d}"
        if ndim == 2 and index % 2 == 0:
            image_id = stem + ".png"
            write_png(os.path.join(folder, image_id), image)
        elif ndim == 2:
            image_id = stem + ".dcm"
            write_dicom(os.path.join(folder, image_id), image, modality="DX")
        elif index % 2 == 0:
            image_id = stem + ".nii.gz"
            write_nifti(os.path.join(folder, image_id), image)
        else:
            image_id = stem
            write_dicom_series(os.path.join(folder, image_id), image, modality="MR")
        ids.append(image_id)
        points.append(points_mm)
    write_landmarks(
        os.path.join(folder, "landmarks.csv"),
        LandmarkTable(ids, _LANDMARKS[ndim], np.stack(points)),
        layout="named",
        id_header="image",
    )
    description = {
        "name": name,
        "ndim": ndim,
        "landmarks_csv": "landmarks.csv",
        "landmark_units": "mm",
        "plain_image_spacing": config["spacing"] if ndim == 2 else None,
        "landmark_names": list(_LANDMARKS[ndim]),
        "generator": config,
    }
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=2)
        handle.write("\n")


def _existing_generator(root):
    """The `generator` section of root/dataset.json, or None."""
    try:
        with open(os.path.join(root, "dataset.json"), encoding="utf-8") as handle:
            return json.load(handle).get("generator")
    except (OSError, ValueError, AttributeError):
        return None


def make_phantom(
    root,
    ndim=2,
    num_images=None,
    seed=0,
    overwrite=False,
    *,
    image_size=None,
    spacing=None,
    noise=0.02,
    max_rotation_deg=15.0,
):
    """Writes a synthetic hand dataset into `root` (or reuses it) and loads it.

    Layout: `root/images/` holds `phantom2d_000.png`, `phantom2d_001.dcm`, ... (2D: 16-bit PNG
    at even indices, DICOM with a non-zero origin at odd ones) or `phantom3d_000.nii.gz`,
    `phantom3d_001/` (3D: NIfTI and DICOM series folders, both with the same oblique
    geometry); `root/landmarks.csv` holds the landmarks in physical mm (named layout, id column
    `image` = path relative to root); `root/dataset.json` describes it (`plain_image_spacing`
    is the spacing PNGs must be read with) and records the generator options.

    Everything is written into a temporary folder beside `root` and renamed at the end. If
    `root` already holds a phantom generated with the same options, it is reused as it is.
    Image `i` is drawn from `np.random.default_rng([seed, i])`: the same seed gives identical
    pixels and landmarks.

    Args:
        root: str or os.PathLike. Dataset folder.
        ndim: int. 2 (hand radiographs, 37 landmarks) or 3 (hand volumes, 28 landmarks).
        num_images: int, optional. Number of images; default 100 (2D) or 40 (3D).
        seed: int. Random seed (>= 0).
        overwrite: bool. Replace an existing `root` that does not hold this very dataset.
        image_size: int or sequence of int, optional. Pixels along x, y[, z]; default
            (256, 256) or (64, 96, 32).
        spacing: float or sequence of float, optional. Millimetres per pixel along x, y[, z];
            default (0.9, 1.0) or (2.5, 2.2, 3.0) at the default size, scaled to keep the field
            of view at other sizes.
        noise: float. Noise standard deviation as a fraction of the intensity range.
        max_rotation_deg: float. Largest in-plane rotation of the hand, degrees, in [0, 30].

    Returns:
        keraslm.data.LandmarkDataset, from `keraslm.data.load_folder(root)`.

    Raises:
        DatasetError: invalid arguments (the message names the argument and value), `root`
            exists and holds something else while `overwrite` is False, or the hand does not
            fit into the field of view.

    Examples:
        >>> dataset = make_phantom("/tmp/phantom2d", num_images=10)  # doctest: +SKIP
        >>> dataset.ndim, dataset.num_landmarks  # doctest: +SKIP
        (2, 37)
    """
    from keraslm.data import load_folder  # Here: keraslm.data imports keraslm.datasets users.

    config = _generator_config(ndim, num_images, seed, image_size, spacing, noise, max_rotation_deg)
    root = os.path.abspath(os.fspath(root))
    replace = overwrite
    if os.path.exists(root):
        if _existing_generator(root) == config:
            return load_folder(root)
        empty = os.path.isdir(root) and not os.listdir(root)
        if not (overwrite or empty):
            raise DatasetError(
                f"{root} exists and does not hold this phantom (dataset.json missing or generated "
                "with other options); pass overwrite=True to replace it or choose another root"
            )
        replace = True
    start = time.perf_counter()
    with atomic_folder(root, overwrite=replace) as temporary:
        _write_dataset(temporary, config)
    _log.info(
        "wrote %d %dD phantom images to %s in %.1f s",
        config["num_images"],
        config["ndim"],
        root,
        time.perf_counter() - start,
    )
    return load_folder(root)


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_SPACING",
    "PHANTOM2D_LANDMARKS",
    "PHANTOM3D_LANDMARKS",
    "make_phantom",
    "render_phantom",
]
