"""PNG / JPEG / BMP / TIFF images (2D, grey) through Pillow.

Plain image files carry no trustworthy geometry: spacing is 1.0 mm per pixel unless the caller
passes `spacing=` (for example the documented 0.1 mm of ISBI 2015), origin is zero and the
direction is the identity.
"""
import numpy as np
import PIL.Image

from keraslm.errors import ImageReadError, ImageWriteError
from keraslm.files import atomic_path
from keraslm.io.image import Image

PLAIN_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# ITU-R BT.601 luma, as Pillow's "L" conversion uses.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _open(path):
    try:
        return PIL.Image.open(path)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable image file ({error})") from None


def _geometry(spacing):
    if spacing is None:
        return {"spacing": 1.0, "spacing_source": "default"}
    return {"spacing": spacing, "spacing_source": "caller"}


def _to_grey(pixels, path):
    """(H, W[, C]) Pillow array -> (H, W) grey; identical colour channels are kept exactly."""
    if pixels.ndim == 2:
        return pixels
    colour = pixels[..., :3]  # Alpha, if any, is dropped.
    if colour.shape[-1] == 1:
        return colour[..., 0]
    if np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(
        colour[..., 0], colour[..., 2]
    ):
        return colour[..., 0].copy()
    if colour.shape[-1] != 3:
        raise ImageReadError(f"{path}: unsupported channel layout {pixels.shape}")
    return colour.astype(np.float32) @ _LUMA_WEIGHTS


def read_plain_header(path, spacing=None):
    """Reads only the size of a plain image; see `keraslm.io.read_image_header`."""
    with _open(path) as handle:
        width, height = handle.size
    return Image(
        np.broadcast_to(np.zeros((), np.float32), (height, width)), path=path, **_geometry(spacing)
    )


def read_plain(path, spacing=None):
    """Reads a PNG/JPEG/BMP/TIFF file as a 2D grey `Image` (colour converted to luma)."""
    with _open(path) as handle:
        if getattr(handle, "n_frames", 1) > 1:
            raise ImageReadError(
                f"{path}: holds {handle.n_frames} frames; multi-page plain images are not "
                "supported (use NIfTI or DICOM for 3D)"
            )
        try:
            handle.load()
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageReadError(f"{path}: corrupt or truncated image ({error})") from None
        if handle.mode in ("P", "PA", "1", "CMYK", "LA"):
            # Palette, bilevel, grey+alpha and CMYK (stored inverted in Adobe JPEGs): Pillow's
            # conversion, which knows each mode's meaning; alpha is dropped.
            handle = handle.convert({"PA": "RGBA", "CMYK": "RGB"}.get(handle.mode, "L"))
        pixels = np.asarray(handle)
    array = _to_grey(pixels, path)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ImageReadError(f"{path}: contains non-finite pixel values (NaN or inf)")
    return Image(array, path=path, **_geometry(spacing))


def write_png(path, image):
    """Writes a 2D `Image` as an 8- or 16-bit grey PNG, atomically.

    PNG keeps no geometry: read the file back with the same `spacing=`. Arrays must be
    integer-valued in [0, 65535]; uint8 stays 8-bit, everything else is written as 16-bit.

    Args:
        path: str. Target file (.png).
        image: Image or np.ndarray. 2D pixels.
    """
    array = np.asarray(image.array if isinstance(image, Image) else image)
    if array.ndim != 2:
        raise ImageWriteError(f"{path}: PNG holds 2D images only. Received shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ImageWriteError(
                f"{path}: PNG holds integer pixels; received non-integer values of dtype "
                f"{array.dtype}"
            )
        if array.min() < 0 or array.max() > 65535:
            raise ImageWriteError(
                f"{path}: PNG pixel values must lie in [0, 65535]. Received range "
                f"[{array.min()}, {array.max()}]"
            )
        array = array.astype(np.uint16)
    with atomic_path(path, suffix=".png") as temporary:
        PIL.Image.fromarray(array).save(temporary, format="PNG")
