"""Images in physical space and landmark files.

Conventions (details in `keraslm.io.image`): arrays are `[y, x]` / `[z, y, x]`; points are
`(x, y[, z])` in continuous index units or in millimetres of the LPS patient frame.
"""
from keraslm.io.dicom import read_dicom_series, write_dicom, write_dicom_series
from keraslm.io.formats import (
    IMAGE_FORMATS,
    ImageFormat,
    holds_geometry,
    image_extensions,
    register_image_format,
    strip_image_extension,
    write_image,
)
from keraslm.io.image import Image, orientation_groups, storage_orientation
from keraslm.io.images import (SUPPORTED_FORMATS, image_plane_lps, is_image_path, read_image,
                               read_image_header, with_in_plane_spacing)
from keraslm.io.landmarks import LandmarkTable, read_landmarks, write_landmarks
from keraslm.io.markups import (
    LANDMARK_FILE_EXTENSIONS,
    landmark_file_stem,
    natural_key,
    read_landmark_file,
    write_markups,
)
from keraslm.io.nifti import write_nifti
from keraslm.io.plain import write_png

__all__ = [
    "IMAGE_FORMATS",
    "Image",
    "orientation_groups",
    "storage_orientation",
    "ImageFormat",
    "LANDMARK_FILE_EXTENSIONS",
    "LandmarkTable",
    "SUPPORTED_FORMATS",
    "holds_geometry",
    "image_extensions",
    "image_plane_lps",
    "is_image_path",
    "landmark_file_stem",
    "natural_key",
    "read_dicom_series",
    "read_image",
    "read_image_header",
    "read_landmark_file",
    "read_landmarks",
    "register_image_format",
    "strip_image_extension",
    "write_dicom",
    "write_dicom_series",
    "write_image",
    "write_landmarks",
    "write_markups",
    "write_nifti",
    "write_png",
    "with_in_plane_spacing",
]
