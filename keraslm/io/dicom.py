"""DICOM images through pydicom: single files (2D), multi-frame files with per-frame geometry
(3D) and folders holding one series (3D).

Geometry follows the DICOM standard (PS3.3 C.7.6.2.1.1): the pixel in column c, row r of a
slice lies at `ImagePositionPatient + c * dc * X + r * dr * Y`, where X, Y are the row and column
direction cosines of ImageOrientationPatient and `PixelSpacing = [dr, dc]` (row spacing first).
In keraslm terms x = column, y = row, so `spacing = (dc, dr[, slice spacing])` and the
direction's columns are X, Y[, X cross Y]. Slices are ordered by their position along X cross Y.
A 2D image uses the in-plane components (see `keraslm.io.image`).
"""
import datetime
import os

import numpy as np
import pydicom
import pydicom.errors
import pydicom.multival
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from keraslm.errors import ImageReadError, ImageWriteError
from keraslm.files import atomic_folder, atomic_path
from keraslm.io.image import Image
from keraslm.io.plane import check_plane

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_MULTIFRAME_WORD_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7.3"
_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
_SLICE_SPACING_TOLERANCE = 1e-3  # Relative spread of slice gaps tolerated in a series.
# Positions are stored rounded (often to 1e-3 mm): two roundings in one gap, and in-plane
# shifts up to a few of them, are noise.
_POSITION_ROUNDING_MM = 2e-3
_SHEAR_TOLERANCE_MM = 0.05


def _read(path, stop_before_pixels=False):
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable DICOM file ({error})") from None


def _floats(value, count, path, keyword):
    try:
        sequence = isinstance(value, (list, tuple, pydicom.multival.MultiValue))
        values = [float(v) for v in value] if sequence else [float(value)]
    except (TypeError, ValueError):
        values = []
    if len(values) != count or not np.all(np.isfinite(values)):
        raise ImageReadError(f"{path}: {keyword} must hold {count} numbers. Received {value!r}")
    return np.array(values)


def _in_plane_spacing(ds, path, spacing_override):
    """(x spacing, y spacing) and its source."""
    if spacing_override is not None:
        return None, "caller"
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds and ds[keyword].value is not None:
            row_spacing, column_spacing = _floats(ds[keyword].value, 2, path, keyword)
            if not (row_spacing > 0 and column_spacing > 0):
                raise ImageReadError(f"{path}: {keyword} is {[row_spacing, column_spacing]}; a "
                                     "pixel spacing must be positive (give it with --spacing "
                                     "after removing the tag)")
            return np.array([column_spacing, row_spacing]), keyword
    return np.ones(2), "default"


def _orientation(ds, path):
    """Row and column direction cosines (X, Y) as a (3, 2) matrix, or None."""
    if "ImageOrientationPatient" not in ds:
        return None
    cosines = _floats(ds.ImageOrientationPatient, 6, path, "ImageOrientationPatient")
    return np.stack([cosines[:3], cosines[3:]], axis=1)


def dicom_plane_lps(path):
    """(origin, axes `(3, 2)`) of a 2D DICOM file's plane in LPS (ImagePositionPatient,
    ImageOrientationPatient), or None when it stores no placement or is multi-frame."""
    ds = _read(path, stop_before_pixels=True)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        return None
    axes = _orientation(ds, path)
    if axes is None or "ImagePositionPatient" not in ds:
        return None
    axes = axes / np.linalg.norm(axes, axis=0)
    return check_plane(_floats(ds.ImagePositionPatient, 3, path, "ImagePositionPatient"), axes,
                       path)


def _plane_geometry_2d(origin_3d, axes_3d):
    """2D origin and direction from a plane placed in 3D: ITK's in-plane components where the
    plane is parallel to the physical x-y plane, else the plane's own coordinates."""
    if np.allclose(axes_3d[2], 0.0, atol=1e-6):
        return origin_3d[:2], axes_3d[:2]
    return np.zeros(2), np.eye(2)


def _stored_to_grey(ds, stored, path):
    """Stored values -> MONOCHROME2 grey values with the modality rescale applied."""
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples == 3:
        if photometric.startswith("YBR"):
            stored = pydicom.pixels.convert_color_space(stored, photometric, "RGB")
        return stored[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if samples != 1:
        raise ImageReadError(f"{path}: unsupported SamplesPerPixel={samples}")
    if photometric == "MONOCHROME1":
        bits = int(getattr(ds, "BitsStored", stored.dtype.itemsize * 8))
        if int(getattr(ds, "PixelRepresentation", 0)) == 0:
            stored = (2**bits - 1) - stored.astype(np.int64)
        else:
            stored = -1 - stored.astype(np.int64)
    return stored


def _rescale(pixels, slope, intercept):
    if slope == 1.0 and intercept == 0.0:
        if pixels.dtype == np.int64:  # From MONOCHROME1 inversion: narrow again.
            return pixels.astype(np.int32)
        return pixels
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _rescale_parameters(item):
    return float(getattr(item, "RescaleSlope", 1.0)), float(getattr(item, "RescaleIntercept", 0.0))


def _pixel_array(ds, path):
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data")
    try:
        return ds.pixel_array
    except Exception as error:  # pydicom raises many types for broken or undecodable data.
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageReadError(
            f"{path}: cannot decode pixel data (transfer syntax {syntax}): {error}"
        ) from None


def _check_finite(array, path):
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ImageReadError(f"{path}: contains non-finite pixel values (NaN or inf)")
    return array


def _single_frame_geometry(ds, path, spacing):
    in_plane, source = _in_plane_spacing(ds, path, spacing)
    axes = _orientation(ds, path)
    if axes is not None and "ImagePositionPatient" in ds:
        position = _floats(ds.ImagePositionPatient, 3, path, "ImagePositionPatient")
        origin, direction = _plane_geometry_2d(position, axes)
    else:
        origin, direction = np.zeros(2), np.eye(2)
    return {
        "spacing": spacing if spacing is not None else in_plane,
        "spacing_source": source,
        "origin": origin,
        "direction": direction,
    }


def _frame_items(ds, path):
    """Per-frame (position, orientation, slope, intercept) of an enhanced multi-frame file."""
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    frames = int(ds.NumberOfFrames)
    if per_frame is None or len(per_frame) != frames:
        raise ImageReadError(
            f"{path}: multi-frame DICOM with {frames} frames has no per-frame geometry "
            "(PerFrameFunctionalGroupsSequence with PlanePositionSequence); cannot place it in 3D"
        )
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()

    def lookup(frame, keyword):
        for group in (frame, shared):
            if keyword in group:
                return group[keyword].value[0]
        return None

    measures = lookup(per_frame[0], "PixelMeasuresSequence")
    if measures is None or "PixelSpacing" not in measures:
        raise ImageReadError(f"{path}: multi-frame DICOM has no PixelMeasuresSequence/PixelSpacing")
    row_spacing, column_spacing = _floats(measures.PixelSpacing, 2, path, "PixelSpacing")
    items = []
    for index, frame in enumerate(per_frame):
        position = lookup(frame, "PlanePositionSequence")
        orientation = lookup(frame, "PlaneOrientationSequence")
        if position is None or orientation is None:
            raise ImageReadError(
                f"{path}: frame {index} lacks PlanePositionSequence or PlaneOrientationSequence"
            )
        transform = lookup(frame, "PixelValueTransformationSequence")
        slope, intercept = _rescale_parameters(transform if transform is not None else ds)
        items.append(
            (
                _floats(position.ImagePositionPatient, 3, path, "ImagePositionPatient"),
                _orientation(orientation, path),
                slope,
                intercept,
            )
        )
    return np.array([column_spacing, row_spacing]), items


def _stack_geometry(positions, axes, path):
    """Sort order, origin, slice spacing and 3x3 direction of slices at `positions`."""
    normal = np.cross(axes[:, 0], axes[:, 1])
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    gaps = np.diff(distances[order])
    if len(gaps) == 0:
        raise ImageReadError(f"{path}: a 3D image needs at least 2 slices; found 1")
    if np.any(gaps <= 1e-6):
        raise ImageReadError(f"{path}: two or more slices share the same position")
    slice_spacing = float(np.mean(gaps))
    if np.max(np.abs(gaps - slice_spacing)) > _SLICE_SPACING_TOLERANCE * slice_spacing + _POSITION_ROUNDING_MM:
        smallest = float(np.min(gaps))
        wide = np.flatnonzero(gaps > 1.5 * smallest)
        missing = (f"; {len(wide)} gap(s) of {', '.join(f'{g:.4g}' for g in gaps[wide][:3])} mm "
                   f"where the others are {smallest:.4g}: slice(s) missing (first after the "
                   f"slice at {distances[order][wide[0]]:.4g} mm along the normal)?"
                   if wide.size and wide.size < len(gaps) else "")
        raise ImageReadError(
            f"{path}: slice spacing is not uniform (gaps from {gaps.min():.4g} to "
            f"{gaps.max():.4g} mm{missing}); resample the series first"
        )
    # Each slice straight along the normal from the first: a gantry tilt or a sheared stack
    # shifts them within their plane, which a (spacing, direction) grid cannot hold.
    shift = np.abs((positions[order] - positions[order[0]]) @ axes).max()
    if shift > _SHEAR_TOLERANCE_MM:
        raise ImageReadError(
            f"{path}: the slices are shifted within their plane from one to the next (up to "
            f"{shift:.3g} mm: a gantry tilt or a sheared stack); keraslm reads stacks of slices "
            "straight along their normal: resample the series first (dcm2niix corrects a "
            "gantry tilt)")
    direction = np.concatenate([axes, normal[:, np.newaxis]], axis=1)
    return order, positions[order[0]], slice_spacing, direction


def _read_multiframe(ds, path, spacing, header_only):
    in_plane, items = _frame_items(ds, path)
    axes = items[0][1]
    for index, item in enumerate(items):
        if not np.allclose(item[1], axes, atol=1e-5):
            raise ImageReadError(f"{path}: frame {index} has a different orientation")
    positions = np.stack([item[0] for item in items])
    order, origin, slice_spacing, direction = _stack_geometry(positions, axes, path)
    geometry = {
        "spacing": spacing if spacing is not None else [*in_plane, slice_spacing],
        "spacing_source": "caller" if spacing is not None else "PixelMeasuresSequence",
        "origin": origin,
        "direction": direction,
        "path": path,
    }
    shape = (len(items), int(ds.Rows), int(ds.Columns))
    if header_only:
        return Image(np.broadcast_to(np.zeros((), np.float32), shape), **geometry)
    frames = _stored_to_grey(ds, _pixel_array(ds, path), path)
    slices = [_rescale(frames[i], items[i][2], items[i][3]) for i in order]
    return Image(_check_finite(_stack_slices(slices), path), **geometry)


def _stack_slices(slices):
    dtypes = {s.dtype for s in slices}
    if len(dtypes) > 1:
        slices = [s.astype(np.float32) for s in slices]
    return np.stack(slices)


def read_dicom_file(path, spacing=None, header_only=False):
    """Reads one DICOM file: 2D, or 3D if multi-frame with per-frame geometry."""
    ds = _read(path, stop_before_pixels=header_only)
    if not header_only and "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        return _read_multiframe(ds, path, spacing, header_only)
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no image (no Rows/Columns)")
    geometry = _single_frame_geometry(ds, path, spacing)
    if header_only:
        shape = (int(ds.Rows), int(ds.Columns))
        return Image(np.broadcast_to(np.zeros((), np.float32), shape), path=path, **geometry)
    pixels = _stored_to_grey(ds, _pixel_array(ds, path), path)
    array = _rescale(pixels, *_rescale_parameters(ds))
    return Image(_check_finite(array, path), path=path, **geometry)


def read_dicom_series(folder, spacing=None, header_only=False):
    """Reads a folder holding one DICOM series as a 3D `Image`."""
    names = sorted(
        name for name in os.listdir(folder)
        if not name.startswith(".") and os.path.isfile(os.path.join(folder, name))
    )
    headers = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError):
            continue  # Not DICOM (a README, a thumbnail): ignored.
        if "Rows" in ds and "ImagePositionPatient" in ds:
            headers.append((path, ds))
    if not headers:
        raise ImageReadError(f"{folder}: folder holds no DICOM image slices")
    series = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        raise ImageReadError(
            f"{folder}: folder holds {len(series)} DICOM series ({', '.join(series)}); "
            "put each series in its own folder"
        )
    first_path, first = headers[0]
    axes = _orientation(first, first_path)
    if axes is None:
        raise ImageReadError(f"{first_path}: slice has no ImageOrientationPatient")
    size = (int(first.Rows), int(first.Columns))
    for path, ds in headers:
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise ImageReadError(
                f"{path}: slice size {int(ds.Rows)}x{int(ds.Columns)} differs from {size[0]}x{size[1]}"
            )
        orientation = _orientation(ds, path)
        if orientation is None:
            raise ImageReadError(f"{path}: slice has no ImageOrientationPatient")
        if not np.allclose(orientation, axes, atol=1e-5):
            raise ImageReadError(f"{path}: slice orientation differs from the rest of the series")
    positions = np.stack(
        [_floats(ds.ImagePositionPatient, 3, path, "ImagePositionPatient") for path, ds in headers]
    )
    order, origin, slice_spacing, direction = _stack_geometry(positions, axes, folder)
    in_plane, source = _in_plane_spacing(first, first_path, spacing)
    geometry = {
        "spacing": spacing if spacing is not None else [*in_plane, slice_spacing],
        "spacing_source": source,
        "origin": origin,
        "direction": direction,
        "path": folder,
    }
    if header_only:
        shape = (len(headers), *size)
        return Image(np.broadcast_to(np.zeros((), np.float32), shape), **geometry)
    slices = []
    for index in order:
        path = headers[index][0]
        ds = _read(path)
        pixels = _stored_to_grey(ds, _pixel_array(ds, path), path)
        slices.append(_rescale(pixels, *_rescale_parameters(ds)))
    return Image(_check_finite(_stack_slices(slices), folder), **geometry)


# ----------------------------------------------------------------------------------- writing


def _stored_values(array, path):
    """Pixel array -> (stored uint16/int16 array, slope, intercept)."""
    array = np.asarray(array)
    if not np.all(np.isfinite(array)):
        raise ImageWriteError(f"{path}: cannot write non-finite pixel values")
    integral = array.dtype.kind in "iub" or np.all(array == np.round(array))
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if integral and low >= 0 and high <= 65535:
        return array.astype(np.uint16), 1.0, 0.0
    if integral and low >= -32768 and high <= 32767:
        return array.astype(np.int16), 1.0, 0.0
    slope = (high - low) / 65535.0 if high > low else 1.0
    stored = np.round((array.astype(np.float64) - low) / slope)
    return stored.astype(np.uint16), slope, low


def _base_dataset(sop_class, stored, study_uid, series_uid, modality):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
    ds.PatientName = "keraslm^phantom"
    ds.PatientID = "keraslm"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    return ds


def _decimal_strings(values):
    # DS values hold at most 16 characters.
    return [f"{float(v):.10g}"[:16] for v in values]


def _save(ds, stored, path):
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    with atomic_path(path, suffix=".dcm") as temporary:
        ds.save_as(temporary, enforce_file_format=True)


def _require_orthonormal(image, path):
    if not np.allclose(image.direction.T @ image.direction, np.eye(image.ndim), atol=1e-6):
        raise ImageWriteError(f"{path}: DICOM needs an orthonormal direction. Received {image.direction}")


def _direction_3d(image):
    """Direction cosines X, Y (3,) and position (3,) of the first slice, in 3D."""
    if image.ndim == 2:
        direction = np.zeros((3, 2))
        direction[:2] = image.direction
        return direction[:, 0], direction[:, 1], np.array([*image.origin, 0.0])
    return image.direction[:, 0], image.direction[:, 1], image.origin


def write_dicom(path, image, modality="OT"):
    """Writes an `Image` as one DICOM file, atomically: 2D as a single frame, 3D as a multi-frame
    file with per-frame functional groups (PlanePosition/PlaneOrientation/PixelMeasures).

    Integer pixels in the uint16 or int16 range are stored exactly; other values are stored as
    uint16 with RescaleSlope/RescaleIntercept (relative error below 1e-5 of the value range).

    Args:
        path: str. Target file.
        image: Image. 2D or 3D, orthonormal direction.
        modality: str. DICOM Modality, e.g. "OT", "DX", "MR".
    """
    _require_orthonormal(image, path)
    stored, slope, intercept = _stored_values(image.array, path)
    row_cosines, column_cosines, position = _direction_3d(image)
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    pixel_spacing = _decimal_strings([image.spacing[1], image.spacing[0]])
    orientation = _decimal_strings([*row_cosines, *column_cosines])
    if image.ndim == 2:
        ds = _base_dataset(_SECONDARY_CAPTURE, stored, study_uid, series_uid, modality)
        ds.PixelSpacing = pixel_spacing
        ds.ImagePositionPatient = _decimal_strings(position)
        ds.ImageOrientationPatient = orientation
        ds.RescaleSlope = _decimal_strings([slope])[0]
        ds.RescaleIntercept = _decimal_strings([intercept])[0]
        _save(ds, stored, path)
        return
    ds = _base_dataset(_MULTIFRAME_WORD_SECONDARY_CAPTURE, stored, study_uid, series_uid, modality)
    ds.NumberOfFrames = stored.shape[0]
    measures = Dataset()
    measures.PixelSpacing = pixel_spacing
    measures.SliceThickness = _decimal_strings([image.spacing[2]])[0]
    measures.SpacingBetweenSlices = _decimal_strings([image.spacing[2]])[0]
    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = orientation
    transform = Dataset()
    transform.RescaleSlope = _decimal_strings([slope])[0]
    transform.RescaleIntercept = _decimal_strings([intercept])[0]
    transform.RescaleType = "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([plane_orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    slice_step = image.direction[:, 2] * image.spacing[2]
    for k in range(stored.shape[0]):
        plane_position = Dataset()
        plane_position.ImagePositionPatient = _decimal_strings(position + k * slice_step)
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([plane_position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    _save(ds, stored, path)


def write_dicom_series(folder, image, modality="MR", overwrite=False):
    """Writes a 3D `Image` as a folder of single-slice DICOM files (one series), atomically:
    the folder appears complete or not at all.

    Args:
        folder: str. Target folder; must not exist unless `overwrite`.
        image: Image. 3D, orthonormal direction.
        modality: str. DICOM Modality.
        overwrite: bool. Replace an existing folder.
    """
    if image.ndim != 3:
        raise ImageWriteError(f"{folder}: a DICOM series holds a 3D image. Received {image.ndim}D")
    _require_orthonormal(image, folder)
    stored, slope, intercept = _stored_values(image.array, folder)
    row_cosines, column_cosines, position = _direction_3d(image)
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    slice_step = image.direction[:, 2] * image.spacing[2]
    try:
        with atomic_folder(folder, overwrite=overwrite) as temporary:
            for k in range(stored.shape[0]):
                ds = _base_dataset(_MR_IMAGE, stored[k], study_uid, series_uid, modality)
                ds.InstanceNumber = k + 1
                ds.PixelSpacing = _decimal_strings([image.spacing[1], image.spacing[0]])
                ds.SliceThickness = _decimal_strings([image.spacing[2]])[0]
                ds.ImagePositionPatient = _decimal_strings(position + k * slice_step)
                ds.ImageOrientationPatient = _decimal_strings([*row_cosines, *column_cosines])
                ds.RescaleSlope = _decimal_strings([slope])[0]
                ds.RescaleIntercept = _decimal_strings([intercept])[0]
                _save(ds, stored[k], os.path.join(temporary, f"slice_{k:04d}.dcm"))
    except FileExistsError as error:
        raise ImageWriteError(str(error)) from None
