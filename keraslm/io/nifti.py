"""NIfTI images (.nii, .nii.gz) through nibabel, 2D or 3D.

nibabel's data is indexed `data[i, j, k]` with i the x axis, so keraslm's array is `data.T`.
The affine maps (i, j, k) to RAS millimetres; keraslm works in LPS, so x and y are negated.
"""
import warnings

import nibabel as nib
import numpy as np

from keraslm.errors import ImageReadError, ImageWriteError, KeraslmWarning
from keraslm.files import atomic_path
from keraslm.io.image import Image
from keraslm.io.plane import check_plane

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _load(path):
    try:
        return nib.load(path)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Exception as error:  # nibabel raises several types for malformed headers.
        raise ImageReadError(f"{path}: not a readable NIfTI file ({error})") from None


def _spatial_shape(shape, path):
    """Drops trailing singleton axes beyond the spatial ones; 2D or 3D only."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise ImageReadError(
            f"{path}: NIfTI image of shape {shape} is {len(shape)}D; keraslm reads 2D or 3D images"
        )
    return shape


#: NIfTI spatial units (`xyzt_units`) in mm; "unknown" is taken as mm, as ITK and Slicer do.
_MM_PER_UNIT = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def _mm_per_unit(nifti, path):
    """mm per unit of the file's affine: its header's spatial unit (NIfTI-1/2)."""
    try:
        unit = nifti.header.get_xyzt_units()[0]
    except (AttributeError, KeyError, ValueError):
        return 1.0  # Not a NIfTI header that says (e.g. an Analyze image): mm.
    if unit not in _MM_PER_UNIT:
        raise ImageReadError(f"{path}: NIfTI spatial unit {unit!r}; keraslm reads mm, meter "
                             "or micron")
    return _MM_PER_UNIT[unit]


def _checked_affine(nifti, path):
    """nibabel's affine (the sform where its code is set, else the qform, else the header's
    fallback), with a KeraslmWarning where other software places the image otherwise: qform
    and sform both set and different (ITK and 3D Slicer read the qform), or neither set."""
    header = nifti.header
    if not hasattr(header, "get_qform"):  # Analyze-like headers hold no forms.
        return np.asarray(nifti.affine, dtype=np.float64)
    qform, qform_code = header.get_qform(coded=True)
    sform, sform_code = header.get_sform(coded=True)
    if qform_code and sform_code:
        difference = np.abs(np.asarray(qform, np.float64) - np.asarray(sform, np.float64))
        if difference[:3, 3].max() > 1e-3 or difference[:3, :3].max() > 1e-4 * np.abs(sform[:3, :3]).max():
            warnings.warn(
                f"{path}: its qform and sform disagree (origins "
                f"{np.linalg.norm(np.asarray(qform)[:3, 3] - np.asarray(sform)[:3, 3]):.3g} mm "
                "apart): keraslm reads the sform, as nibabel does; ITK and 3D Slicer read the "
                "qform, so landmarks placed there land elsewhere. Write the file with one "
                "geometry", KeraslmWarning, stacklevel=2)
    elif not qform_code and not sform_code:
        warnings.warn(f"{path}: stores no orientation (qform and sform codes 0): read with "
                      "nibabel's default placement (origin at the centre, rows flipped); 3D "
                      "Slicer places it otherwise, so landmarks placed there land elsewhere",
                      KeraslmWarning, stacklevel=2)
    return np.asarray(nifti.affine, dtype=np.float64)


def _geometry(nifti, ndim, path, spacing):
    affine_lps = _RAS_TO_LPS @ _checked_affine(nifti, path)[:3]
    affine_lps = affine_lps * _mm_per_unit(nifti, path)  # In mm whatever unit the file says.
    axes = affine_lps[:, :ndim]  # (3, ndim): physical step of each index axis.
    steps = np.linalg.norm(axes, axis=0)
    if not np.all(steps > 0):
        raise ImageReadError(f"{path}: NIfTI affine has a zero-length axis: {nifti.affine.tolist()}")
    origin, direction = affine_lps[:, 3], axes / steps
    if ndim == 2:
        if np.allclose(direction[2], 0.0, atol=1e-6):
            origin, direction = origin[:2], direction[:2]
        else:  # Plane not parallel to x-y: use its own coordinates.
            origin, direction = np.zeros(2), np.eye(2)
    return {
        "spacing": spacing if spacing is not None else steps,
        "spacing_source": "caller" if spacing is not None else "nifti",
        "origin": origin,
        "direction": direction,
        "path": path,
    }


def nifti_plane_lps(path):
    """(origin, axes `(3, 2)`) of a 2D NIfTI file's plane in LPS mm, or None for a 3D file."""
    nifti = _load(path)
    if len(_spatial_shape(nifti.shape, path)) != 2:
        return None
    affine_lps = (_RAS_TO_LPS @ np.asarray(nifti.affine, dtype=np.float64)[:3]
                  * _mm_per_unit(nifti, path))
    axes = affine_lps[:, :2]
    return check_plane(affine_lps[:, 3], axes / np.linalg.norm(axes, axis=0), path)


def read_nifti(path, spacing=None, header_only=False):
    """Reads a .nii / .nii.gz file as a 2D or 3D `Image` (array is the transposed data)."""
    nifti = _load(path)
    shape = _spatial_shape(nifti.shape, path)
    geometry = _geometry(nifti, len(shape), path, spacing)
    if header_only:
        return Image(np.broadcast_to(np.zeros((), np.float32), shape[::-1]), **geometry)
    try:
        data = np.asanyarray(nifti.dataobj)
    except Exception as error:  # Truncated or corrupt data block.
        raise ImageReadError(f"{path}: cannot read NIfTI voxel data ({error})") from None
    data = data.reshape(shape)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise ImageReadError(f"{path}: contains non-finite voxel values (NaN or inf)")
        if data.dtype == np.float64 and nifti.get_data_dtype().kind != "f":
            data = data.astype(np.float32)  # Scaled integers: float32 is plenty.
    return Image(np.ascontiguousarray(data.T), **geometry)


def write_nifti(path, image):
    """Writes a 2D or 3D `Image` as NIfTI-1 (.nii or .nii.gz by the name), atomically, with its
    geometry as sform and qform (converted from LPS to RAS).

    Args:
        path: str. Target file ending in .nii or .nii.gz.
        image: Image.
    """
    if not str(path).endswith(NIFTI_EXTENSIONS):
        raise ImageWriteError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    affine = np.eye(4)
    matrix = image.index_to_physical_matrix
    affine[: image.ndim, : image.ndim] = matrix
    affine[: image.ndim, 3] = image.origin
    affine[:3] = _RAS_TO_LPS @ affine[:3]  # LPS -> RAS (its own inverse).
    array = np.asarray(image.array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    nifti = nib.Nifti1Image(np.ascontiguousarray(array.T), affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    nifti.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as temporary:
        nib.save(nifti, temporary)
