"""Heatmap regression networks of Payer et al. 2016 for 2D and 3D images.

`build_model(architecture, ndim, num_landmarks, preset="paper", input_shape=None, **overrides)`
returns a `LandmarkModel`: a functional Keras model from channels-last images
`(batch, *spatial, channels)` to heatmaps `(batch, *spatial / output_stride, num_landmarks)`,
with `model.output_stride` and `model.size_divisor` (every spatial input size must be a
multiple of it). Each architecture is one module with its class, presets and registration
(`keraslm.models.registry`); settings can be overridden by keyword.
"""
from keraslm.models.base import LandmarkModel
from keraslm.models.layers import LinearUpsampling
from keraslm.models.presets import PAPER_INITIALIZER, PRESET_NAMES
from keraslm.models.registry import (
    ARCHITECTURES,
    Architecture,
    build_model,
    get_architecture,
    get_preset,
    register_architecture,
)

# The architectures register themselves on import (one module each).
from keraslm.models.downsampling import DownsamplingNet  # noqa: E402
from keraslm.models.convonly import ConvOnlyNet  # noqa: E402
from keraslm.models.unet import UNet  # noqa: E402
from keraslm.models.scn import SpatialConfigurationNet  # noqa: E402
from keraslm.models.scn2019 import SpatialConfigurationNet2019  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ConvOnlyNet",
    "DownsamplingNet",
    "LandmarkModel",
    "LinearUpsampling",
    "PAPER_INITIALIZER",
    "PRESET_NAMES",
    "SpatialConfigurationNet",
    "SpatialConfigurationNet2019",
    "UNet",
    "build_model",
    "get_architecture",
    "get_preset",
    "register_architecture",
]
