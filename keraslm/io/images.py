"""`read_image` / `read_image_header`: one entry point for every supported image format."""
import os

import numpy as np

from keraslm.errors import ImageReadError
from keraslm.io import dicom, nifti, plain

SUPPORTED_FORMATS = (
    "PNG/JPEG/BMP/TIFF (" + ", ".join(plain.PLAIN_EXTENSIONS) + "), "
    "DICOM files (" + ", ".join(dicom.DICOM_EXTENSIONS) + " or no extension), "
    "a folder holding one DICOM series, NIfTI (" + ", ".join(nifti.NIFTI_EXTENSIONS) + ")"
)


def _reader(path):
    if os.path.isdir(path):
        return dicom.read_dicom_series
    if not os.path.exists(path):
        raise ImageReadError(f"{path}: no such file or folder")
    lower = path.lower()
    if lower.endswith(nifti.NIFTI_EXTENSIONS):
        return nifti.read_nifti
    if lower.endswith(plain.PLAIN_EXTENSIONS):
        return None
    if lower.endswith(dicom.DICOM_EXTENSIONS) or not os.path.splitext(lower)[1]:
        return dicom.read_dicom_file
    raise ImageReadError(f"{path}: unsupported file type; keraslm reads {SUPPORTED_FORMATS}")


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
    reader = _reader(path)
    if reader is None:
        return plain.read_plain(path, spacing)
    return reader(path, spacing)


def read_image_header(path, spacing=None):
    """Reads only an image's geometry, without decoding pixels (fast for large datasets).

    Returns an `Image` whose `array` is a read-only zero placeholder of the right shape (it
    takes no memory); use it for `index_to_physical` / `physical_to_index` and `size`.
    Arguments as for `read_image`.
    """
    path = os.fspath(path)
    spacing = _check_spacing(spacing, path)
    reader = _reader(path)
    if reader is None:
        return plain.read_plain_header(path, spacing)
    return reader(path, spacing, header_only=True)


def is_image_path(path):
    """bool. Whether `path` looks like something `read_image` reads (by name or folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    lower = path.lower()
    return lower.endswith(
        nifti.NIFTI_EXTENSIONS + plain.PLAIN_EXTENSIONS + dicom.DICOM_EXTENSIONS
    )

