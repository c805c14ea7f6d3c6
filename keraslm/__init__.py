"""keraslm: anatomical landmark localization by CNN heatmap regression in TensorFlow / Keras 3.

Implements Payer et al., "Regressing Heatmaps for Multiple Landmark Localization using CNNs"
(MICCAI 2016). Sub-packages:

- `keraslm.io`: images in physical space (PNG/JPEG/BMP/TIFF, DICOM, NIfTI) and landmark CSVs.
- `keraslm.data`: dataset descriptions, splits and cross-validation folds.
- `keraslm.datasets`: built-in datasets (synthetic phantoms, ISBI 2015 layout).
- `keraslm.models`, `keraslm.ops`, `keraslm.training`: networks, on-device augmentation and
  heatmap codec, training.
- `keraslm.predict(model, images)` (`keraslm.prediction`): landmarks in mm in new images;
  `keraslm-predict` / `python -m keraslm predict` on the command line.
"""
import importlib.util as _importlib_util

__version__ = "0.4.4"

if _importlib_util.find_spec("tensorflow") is None:
    raise ImportError(
        "keraslm needs TensorFlow 2.16 or newer, and no TensorFlow is installed. Install keraslm "
        "with the build that fits your machine: `pip install \"keraslm[cpu]\"` (CPU only) or "
        "`pip install \"keraslm[gpu]\"` (NVIDIA GPU); from a source checkout use "
        "`pip install -e \".[cpu]\"` or `pip install -e \".[gpu]\"`."
    )

from keraslm.errors import (  # noqa: E402
    DatasetError,
    ImageReadError,
    ImageWriteError,
    KeraslmError,
    LandmarkFileError,
)



def predict(model, images, spacing=None, refine=None, precision="float32", on_error=None,
            progress=None):
    """Finds landmarks in images; see `keraslm.prediction.predict` (imported on first use, so
    `import keraslm` stays light). On the command line: `keraslm-predict`."""
    from keraslm.prediction import predict as _predict

    return _predict(model, images, spacing=spacing, refine=refine, precision=precision,
                    on_error=on_error, progress=progress)


__all__ = [
    "DatasetError",
    "ImageReadError",
    "ImageWriteError",
    "KeraslmError",
    "LandmarkFileError",
    "__version__",
    "predict",
]
