"""Model metadata: what a trained network needs for prediction, as a JSON-serialisable dict.

Written as `model.json` beside a run's `model.keras` and as `assets/keraslm.json` of a
SavedModel: landmark names, dimension, grid shape and spacing, normalisation, output stride,
sigma, decoding, and for a local stage its crop shape and offset prior. Training adds
`training_precision` and `plain_image_spacing` (the mm per pixel its PNG/JPEG images were read
with, or None; models trained before it lack the key). This module sits below
`keraslm.inference`, `keraslm.export` and `keraslm.training`, which all read or write it.
"""
import numpy as np

from keraslm.errors import KeraslmError

MODEL_METADATA_FILE = "model.json"
METADATA_FORMAT = "keraslm-landmarks/1"
_METADATA_KEYS = ("landmark_names", "ndim", "grid_shape", "grid_spacing", "normalization",
                  "output_stride", "sigma")


def model_metadata(network, grid, normalization, landmark_names, sigma, decode_method="quadratic",
                   crop_shape=None, offset_prior_mm=None):
    """The metadata a trained network needs for prediction (a JSON-serialisable dict).

    With `crop_shape` the network is the local stage of a coarse-to-fine model: "stage" is
    "local", `grid` is its fine grid (shape as in training; prediction covers each image) and
    "crop_shape" the network input, and "offset_prior_mm" (None: no prior) the standard
    deviation of the landmark's offset from the crop centre that `refine_function` weights the
    heatmap with before taking its peak (`HeatmapCodec.centre_prior`). `sigma` (output pixels)
    is one float, or one per landmark (a learned sigma).
    """
    metadata = {
        "format": METADATA_FORMAT,
        "architecture": getattr(network, "architecture", None),
        "landmark_names": list(landmark_names),
        "ndim": int(grid.ndim),
        "grid_shape": [int(n) for n in grid.shape],
        "grid_spacing": [float(s) for s in grid.spacing],
        "normalization": normalization,
        "output_stride": int(network.output_stride),
        "size_divisor": int(getattr(network, "size_divisor", 1)),
        "sigma": float(sigma) if np.ndim(sigma) == 0 else [float(s) for s in sigma],
        "decode_method": decode_method,
        "stage": "global" if crop_shape is None else "local",
    }
    if crop_shape is not None:
        metadata["crop_shape"] = [int(n) for n in crop_shape]
        metadata["offset_prior_mm"] = None if offset_prior_mm is None else float(offset_prior_mm)
    return metadata


def offset_prior_mm(translation_mm):
    """A local stage's `offset_prior_mm`: the standard deviation of the crop-centre offsets it
    was trained on, uniform within +-translation_mm per axis, i.e. translation_mm / sqrt(3);
    None without translation."""
    return float(translation_mm) / np.sqrt(3.0) if translation_mm else None


def check_metadata(metadata, source):
    """Validates a metadata dict read from `source`; returns it."""
    missing = [key for key in _METADATA_KEYS if key not in metadata]
    if missing:
        raise KeraslmError(f"{source}: model metadata lacks {', '.join(missing)}")
    if metadata["ndim"] not in (2, 3) or len(metadata["grid_shape"]) != metadata["ndim"]:
        raise KeraslmError(f"{source}: inconsistent ndim / grid_shape in model metadata")
    return metadata
