"""`read_image` / `read_image_header`: one entry point for every registered image format
(`keraslm.io.formats`)."""
import dataclasses
import os

import numpy as np

from keraslm.errors import ImageReadError, UsageError
from keraslm.io.dicom import dicom_plane_lps
from keraslm.io.formats import _by_name, format_for_path, is_image_path, supported_formats  # noqa: F401
from keraslm.io.nifti import nifti_plane_lps

#: The registered formats, for messages (see `keraslm.io.formats.supported_formats`).
SUPPORTED_FORMATS = supported_formats()


def _check_spacing(spacing, path):
    if spacing is None:
        return None
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ImageReadError(f"{path}: spacing must be positive and finite. Received {spacing!r}")
    return spacing


def read_image(path, spacing=None):
    """Reads an image file or DICOM series folder into an `Image` in physical space.

    Supported: PNG/JPEG/BMP/TIFF (2D grey; colour converted to luma), DICOM single files (2D;
    3D multi-frame with per-frame geometry), a folder holding one DICOM series (3D), NIfTI
    (.nii / .nii.gz, 2D or 3D). See `keraslm.io.image` for axis order and coordinate frames.

    Args:
        path: str or os.PathLike. File or folder.
        spacing: float or sequence of float, optional. Millimetres per index step along
            x, y[, z]; overrides what the file says. Plain images default to 1.0.

    Returns:
        Image.

    Raises:
        ImageReadError: the path is missing, unsupported, corrupt or truncated, has no pixel
            data, is 1D or 4D, or holds non-finite values. The message names the file.

    Examples:
        >>> image = read_image("images/001.jpg", spacing=0.1)  # doctest: +SKIP
        >>> image.index_to_physical([[835.0, 996.0]])  # doctest: +SKIP
        array([[83.5, 99.6]])
    """
    path = os.fspath(path)
    spacing = _check_spacing(spacing, path)
    return format_for_path(path).read(path, spacing)


def read_image_header(path, spacing=None):
    """Reads only an image's geometry, without decoding pixels (fast for large datasets).

    Returns an `Image` whose `array` is a read-only zero placeholder of the right shape (it
    takes no memory); use it for `index_to_physical` / `physical_to_index` and `size`.
    Arguments as for `read_image`.
    """
    path = os.fspath(path)
    spacing = _check_spacing(spacing, path)
    return format_for_path(path).read_header(path, spacing)


def with_in_plane_spacing(image, spacing, spacing_source="caller"):
    """`image`, read from a file that stores no pixel spacing (a DICOM without PixelSpacing /
    ImagerPixelSpacing, read at the default 1 mm), with the given spacing: one value or x, y
    is the in-plane spacing and a 3D image keeps the slice gap its slices' positions give;
    x, y, z for a 3D image are taken as they are. No pixels are read again.

    Args:
        image: Image.
        spacing: float or sequence of float, mm per pixel.
        spacing_source: str. The new `spacing_source` ("caller", or a dataset's source).

    Raises:
        UsageError: another number of values, naming the image.
    """
    values = _check_spacing(spacing, image.path or "image")
    values = np.atleast_1d(np.asarray(values, np.float64))
    if values.size in (1, 2):
        values = np.concatenate([np.broadcast_to(values, (2,)),
                                 np.asarray(image.spacing, np.float64)[2:]])
    elif values.size != image.ndim:
        raise UsageError(
            f"{image.path or 'image'}: --spacing gives {values.size} values (spacing=); this "
            f"image is {image.ndim}D: give MM or X,Y (the in-plane spacing"
            + ("; the slice gap comes from the slices' positions)" if image.ndim == 3 else ")"))
    return dataclasses.replace(image, spacing=values, spacing_source=spacing_source)


def image_plane_lps(path):
    """(origin `(3,)`, axes `(3, 2)`: unit directions of the index axes x, y) of a 2D DICOM or
    NIfTI file's plane in LPS mm, or None (no placement in 3D stored, a 3D image, another
    format); `keraslm.io.plane` maps points between it and the image's 2D space."""
    path = os.fspath(path)
    lower = path.lower()
    if os.path.isdir(path):
        return None
    if lower.endswith((".nii", ".nii.gz")):
        return nifti_plane_lps(path)
    found = _by_name(path)
    if found is not None and found.name == "DICOM files":
        return dicom_plane_lps(path)
    return None
