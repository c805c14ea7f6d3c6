"""Hand anatomy of the synthetic phantoms: landmark names, the mean hand and its random
variation, and the random pose that places a hand in an image.

Hand frame (mm): `(u, v, w)`, u across the hand towards the thumb, v along the fingers
(distal), w out of the back of the hand; the wrist (distal end of radius and ulna) is near the
origin. `sample_hand` draws the landmarks there, and the bones and the soft tissue as tapered
capsules (`Capsule`: segments with a radius that widens towards the bone ends). All phalanges
of a kind share their shape and neighbouring fingers never cross, so all fingertips (and all
joints) look alike: only the spatial configuration tells them apart. `sample_pose` maps the
hand frame into the physical space (mm, LPS) of an image: a random scale, rotation and
translation, centred on the image centre.
"""
import math

import numpy as np

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

#: Landmark names by dimension.
LANDMARKS = {2: PHANTOM2D_LANDMARKS, 3: PHANTOM3D_LANDMARKS}

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


class Capsule:
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
        return Capsule(
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
    return Capsule(start, end, _BONE_RADII[kind], 4)


def sample_hand(rng):
    """Samples one hand in the hand frame (mm).

    Returns:
        (points, bones, tissue): dict name -> (3,) landmark; lists of `Capsule` for bones and
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
        tissue.append(Capsule(ray[1], tip, (8.0, 7.0, 6.0), 1))
    base, angle, lengths = _THUMB_RAY
    base = np.asarray(base) + rng.normal(0.0, 0.7, 2)
    thumb = _ray(rng, base, angle + rng.uniform(-8.0, 8.0), lengths, flexion_deg=(12.0, 10.0))
    for name, point in zip(_THUMB_POINTS, thumb):
        points[f"thumb_{name}"] = point
    for index, kind in enumerate(("metacarpal", "proximal", "distal")):
        bones.append(_bone(thumb[index], thumb[index + 1], kind, index == 0, index == 2))
    tip = thumb[-1] + 2.0 * (thumb[-1] - thumb[-2]) / np.linalg.norm(thumb[-1] - thumb[-2])
    tissue.append(Capsule(thumb[1], tip, (9.0, 7.5, 6.5), 1))

    for carpal, (centre, angle, half_length, radius) in _CARPAL_SHAPES.items():
        centre = np.array([*centre, 0.0])
        centre[:2] += rng.normal(0.0, 0.5, 2)
        angle = math.radians(angle + rng.uniform(-10.0, 10.0))
        half = half_length * rng.uniform(0.9, 1.1) * np.array([math.cos(angle), math.sin(angle), 0])
        radius = radius * rng.uniform(0.93, 1.07)
        bones.append(Capsule(centre - half, centre + half, (radius, radius, radius), 1))
        points[f"{carpal}_center"] = centre

    for u, v_end, radii in (_RADIUS, _ULNA):
        bones.append(Capsule([u, -150.0, 0.0], [u, v_end, 0.0], radii, 6))
    for name, (u, v) in _FOREARM_POINTS.items():
        points[name] = np.array([u, v, 0.0])

    # Soft tissue: palm, thenar and hypothenar eminences, forearm.
    wrist = np.array([0.0, 5.0, 0.0])
    for finger in _FINGERS:
        tissue.append(Capsule(wrist, points[f"{finger}_mcp"], (12.0, 10.5, 9.0), 1))
    tissue.append(Capsule(points["finger2_mcp"], points["finger5_mcp"], (9.0, 9.0, 9.0), 1))
    tissue.append(Capsule([12.0, 8.0, 0.0], points["thumb_mcp"], (12.0, 10.0, 8.0), 1))
    tissue.append(Capsule([-10.0, 10.0, 0.0], points["finger5_mcp"], (11.0, 10.0, 9.0), 1))
    tissue.append(Capsule([-3.0, -150.0, 0.0], [-3.0, 2.0, 0.0], (24.0, 24.0, 23.0), 1))
    return points, bones, tissue


def rotation_matrix(axis, angle):
    """3x3 rotation matrix about unit `axis` by `angle` (radians), Rodrigues' formula."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * (cross @ cross)


def sample_pose(rng, geometry, max_rotation_deg):
    """Samples a pose; returns `(hand_to_physical, scale)`, hand_to_physical mapping `(..., 3)`
    hand-frame mm to `(..., ndim)` physical mm of `geometry`."""
    ndim = geometry.ndim
    scale = rng.uniform(0.9, 1.1)
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    rotation = rotation_matrix([0, 0, 1], angle)
    if ndim == 3:  # Small tilts out of the image plane.
        rotation = rotation_matrix([1, 0, 0], math.radians(rng.uniform(-5, 5))) @ rotation
        rotation = rotation_matrix([0, 1, 0], math.radians(rng.uniform(-5, 5))) @ rotation
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


def landmarks_inside(geometry, points_mm, margin):
    """True if all `points_mm` lie at least `margin` pixels inside the image of `geometry`."""
    points_index = geometry.physical_to_index(points_mm)
    size = np.asarray(geometry.size, dtype=np.float64)
    return bool(np.all(points_index >= margin) and np.all(points_index <= size - 1 - margin))


__all__ = [
    "LANDMARKS",
    "PHANTOM2D_LANDMARKS",
    "PHANTOM3D_LANDMARKS",
    "Capsule",
    "landmarks_inside",
    "rotation_matrix",
    "sample_hand",
    "sample_pose",
]
