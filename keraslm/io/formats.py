"""The image formats keraslm reads and writes, as one registry.

A format is an `ImageFormat`: its file extensions, a reader, a header reader (geometry without
pixels) and optionally a writer. `read_image`, `read_image_header`, `write_image`,
`is_image_path`, image ids (`strip_image_extension`) and dataset loading all look formats up
here, so a new format is one reader module plus one `register_image_format` call below.

Readers take `(path, spacing)` and return an `keraslm.io.Image`; header readers the same with a
zero placeholder array; writers `(path, image)`. `holds_geometry=False` marks formats whose
files carry no pixel spacing (plain PNG/JPEG): their spacing comes from the user or the dataset.
"""
import dataclasses
import os
from typing import Callable, Optional, Tuple

from keraslm.errors import ImageReadError, ImageWriteError, UsageError
from keraslm.io import dicom, nifti, plain


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """One image format.

    Args:
        name: str. Shown in messages, e.g. "NIfTI".
        extensions: tuple of str. Lower-case file name endings, e.g. (".nii", ".nii.gz").
        read: callable `(path, spacing) -> Image`. Its `spacing_source` says where the spacing
            came from: "file" (the file's header), "caller" (`spacing` given) or "default"
            (nothing known: the dataset's or the user's spacing is then required).
        read_header: callable `(path, spacing) -> Image` (placeholder array, real geometry).
        write: callable `(path, image)` or None (read-only format).
        holds_geometry: bool. Whether files carry their pixel spacing.
        folder: bool. The "file" is a folder (a DICOM series).
        no_extension: bool. Also the reader of files without an extension (DICOM).
        note: str. Extra words for the supported-formats message.
    """

    name: str
    extensions: Tuple[str, ...]
    read: Callable
    read_header: Callable
    write: Optional[Callable] = None
    holds_geometry: bool = True
    folder: bool = False
    no_extension: bool = False
    note: str = ""


#: name -> ImageFormat, in registration order.
IMAGE_FORMATS = {}


def register_image_format(image_format):
    """Adds `image_format` to the registry (its name must be new). Returns it."""
    if image_format.name in IMAGE_FORMATS:
        raise UsageError(f"an image format named {image_format.name!r} is registered already")
    IMAGE_FORMATS[image_format.name] = image_format
    return image_format


def image_extensions():
    """tuple of str. Every registered file extension (lower case)."""
    return tuple(e for f in IMAGE_FORMATS.values() for e in f.extensions)


def supported_formats():
    """str. The registered formats for messages, e.g. "NIfTI (.nii, .nii.gz), ..."."""
    parts = []
    for f in IMAGE_FORMATS.values():
        what = ", ".join(f.extensions) + (f" {f.note}" if f.note else "")
        parts.append(f"{f.name} ({what})" if what else f"{f.name}{' ' + f.note if f.note else ''}")
    return ", ".join(parts)


def _by_name(path):
    """The format that claims `path` by its name (or None), without touching the disk."""
    lower = os.fspath(path).lower()
    # Longest extension first, so ".nii.gz" wins over a shorter match.
    matches = [(len(e), f) for f in IMAGE_FORMATS.values() for e in f.extensions if lower.endswith(e)]
    if matches:
        return max(matches, key=lambda match: match[0])[1]
    if not os.path.splitext(lower)[1]:
        for f in IMAGE_FORMATS.values():
            if f.no_extension:
                return f
    return None


def format_for_path(path):
    """The ImageFormat that reads `path` (a folder: the folder format).

    Raises ImageReadError naming the path when it is missing or no format reads it.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for f in IMAGE_FORMATS.values():
            if f.folder:
                return f
    if not os.path.exists(path):
        raise ImageReadError(f"{path}: no such file or folder")
    found = _by_name(path)
    if found is None or found.folder:
        raise ImageReadError(f"{path}: unsupported file type; keraslm reads {supported_formats()}")
    return found


def is_image_path(path):
    """bool. Whether `path` looks like something `read_image` reads: by name, a folder, or a
    file without an extension that starts like a DICOM file (the "DICM" marker after its
    128-byte preamble; scanners often write DICOM files without an extension, and a README
    without one is not taken for an image)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return any(f.folder for f in IMAGE_FORMATS.values())
    lower = path.lower()
    if any(lower.endswith(e) for e in image_extensions()):
        return True
    if os.path.splitext(os.path.basename(lower))[1] or not any(
            f.no_extension for f in IMAGE_FORMATS.values()):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def holds_geometry(path):
    """bool. Whether the file at `path` carries its own pixel spacing (False for plain images,
    whose spacing a dataset or the user supplies). Judged by the name."""
    found = _by_name(path)
    return True if found is None else found.holds_geometry


def strip_image_extension(name):
    """str. `name` without its image extension (the longest registered one that matches)."""
    lower = name.lower()
    matches = [e for e in image_extensions() if lower.endswith(e)]
    return name[: -len(max(matches, key=len))] if matches else name


def write_image(path, image):
    """Writes `image` in the format its file name says (atomically; see each writer)."""
    found = _by_name(path)
    if found is None or found.write is None:
        writable = [f"{f.name} ({', '.join(f.extensions)})" for f in IMAGE_FORMATS.values() if f.write]
        raise ImageWriteError(f"{path}: keraslm writes images as {', '.join(writable)}")
    found.write(path, image)


# -- the formats keraslm knows ----------------------------------------------------------------

register_image_format(ImageFormat(
    "PNG/JPEG/BMP/TIFF", plain.PLAIN_EXTENSIONS, plain.read_plain, plain.read_plain_header,
    write=plain.write_png, holds_geometry=False))
register_image_format(ImageFormat(
    "DICOM files", dicom.DICOM_EXTENSIONS, dicom.read_dicom_file,
    lambda path, spacing=None: dicom.read_dicom_file(path, spacing, header_only=True),
    write=dicom.write_dicom, no_extension=True, note="or no extension"))
register_image_format(ImageFormat(
    "a folder holding one DICOM series", (), dicom.read_dicom_series,
    lambda path, spacing=None: dicom.read_dicom_series(path, spacing, header_only=True),
    write=None, folder=True))
register_image_format(ImageFormat(
    "NIfTI", nifti.NIFTI_EXTENSIONS, nifti.read_nifti,
    lambda path, spacing=None: nifti.read_nifti(path, spacing, header_only=True),
    write=nifti.write_nifti))
