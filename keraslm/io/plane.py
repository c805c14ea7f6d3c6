"""Where a 2D image lies in 3D: the plane of a 2D DICOM (ImagePositionPatient,
ImageOrientationPatient) or 2D NIfTI (its affine) in LPS millimetres.

A 2D image has a 2D physical space (`keraslm.io.image`): the in-plane components of its
position and orientation where its plane is parallel to the physical x-y plane (axial), else
the plane's own coordinates. 3D Slicer places landmarks of such an image in 3D LPS; these
functions take them into the image's 2D space and back:

    index (x, y) --spacing--> s * index --origin_3d + axes_3d @--> LPS mm (3D)
                                        --origin_2d + direction_2d @--> the image's 2D mm
"""
import numpy as np

from keraslm.errors import ImageReadError


def is_axial(plane):
    """Whether a plane (`keraslm.io.image_plane_lps`) is parallel to the physical x-y plane: its 2D image
    space is then the LPS x, y of its points."""
    return bool(np.allclose(np.asarray(plane[1])[2], 0.0, atol=1e-6))


def lps_to_image_2d(points_lps, plane, header):
    """3D LPS points `(n, 3)` -> the 2D image's physical mm `(n, 2)`, and each point's distance
    from the plane (mm). `header`: the image (`read_image_header`) for its 2D origin and
    direction."""
    origin, axes = np.asarray(plane[0], np.float64), np.asarray(plane[1], np.float64)
    offset = np.asarray(points_lps, np.float64) - origin
    in_plane = offset @ axes  # (n, 2): s * index.
    distance = np.linalg.norm(offset - in_plane @ axes.T, axis=-1)
    points = np.asarray(header.origin, np.float64) + in_plane @ np.asarray(header.direction).T
    return points, distance


def image_2d_to_lps(points_2d, plane, header):
    """The 2D image's physical mm `(n, 2)` -> 3D LPS points `(n, 3)` on its plane (NaN stays
    NaN)."""
    origin, axes = np.asarray(plane[0], np.float64), np.asarray(plane[1], np.float64)
    in_plane = (np.asarray(points_2d, np.float64) - np.asarray(header.origin, np.float64)) @ (
        np.asarray(header.direction, np.float64))
    return origin + in_plane @ axes.T


def check_plane(origin, axes, path):
    """The plane as float arrays; an ImageReadError for non-orthonormal axes."""
    origin, axes = np.asarray(origin, np.float64), np.asarray(axes, np.float64)
    if not np.allclose(axes.T @ axes, np.eye(2), atol=1e-4):
        raise ImageReadError(f"{path}: its image axes in 3D are not orthonormal: {axes.T.tolist()}")
    return origin, axes
