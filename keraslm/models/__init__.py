"""Heatmap regression networks of Payer et al. 2016 for 2D and 3D images.

`build_model(architecture, ndim, num_landmarks, preset="paper", input_shape=None, **overrides)`
returns a `LandmarkModel`: a functional Keras model from channels-last images
`(batch, *spatial, channels)` to heatmaps `(batch, *spatial / output_stride, num_landmarks)`,
with `model.output_stride` and `model.size_divisor` (every spatial input size must be a
multiple of it). Settings come from `PRESETS` (data) and can be overridden by keyword.
"""
from keraslm.models.architectures import (
    ARCHITECTURES,
    ConvOnlyNet,
    DownsamplingNet,
    LandmarkModel,
    SpatialConfigurationNet,
    SpatialConfigurationNet2019,
    UNet,
    build_model,
)
from keraslm.models.layers import LinearUpsampling
from keraslm.models.presets import PAPER_INITIALIZER, PRESETS

__all__ = [
    "ARCHITECTURES",
    "ConvOnlyNet",
    "DownsamplingNet",
    "LandmarkModel",
    "LinearUpsampling",
    "PAPER_INITIALIZER",
    "PRESETS",
    "SpatialConfigurationNet",
    "SpatialConfigurationNet2019",
    "UNet",
    "build_model",
]
