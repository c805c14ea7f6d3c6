"""The authors' 2019 SCN (Medical Image Analysis 54): U-Net local appearance x spatial configuration.

The class, its presets and its registration (`keraslm.models.registry`).
"""
import math

import keras

from keraslm.models import blocks
from keraslm.models.base import LandmarkModel, check_kernel_size, check_positive_int, check_rate, common_args
from keraslm.models.registry import Architecture, register_architecture


@keras.saving.register_keras_serializable(package="keraslm")
class SpatialConfigurationNet2019(LandmarkModel):
    """The authors' later SCN (Payer et al., Medical Image Analysis 54, 2019).

    Local appearance: a U-Net with add-skips, leaky ReLU and dropout, then a kernel-1
    convolution to `H_app`. Spatial configuration: `H_app` average-pooled by
    `spatial_downsampling`, `num_spatial_convs` leaky-ReLU convolutions with
    `spatial_kernel_size`, one more such convolution to `num_landmarks` channels with tanh,
    fixed linear upsampling back. Output: `H = H_app * H_acc`.

    Args:
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of heatmaps.
        filters: int. channels of every hidden convolution.
        kernel_size: int or tuple of `ndim` ints. kernel of the U-Net convolutions.
        num_levels: int. U-Net resolution levels (`num_levels - 1` pooling steps).
        convs_per_level: int. convolutions per U-Net level on each path.
        negative_slope: float. leaky ReLU slope of every hidden convolution.
        dropout: float. dropout rate in every U-Net level.
        spatial_kernel_size: int or tuple of `ndim` ints. kernel of the spatial convolutions.
        num_spatial_convs: int. hidden spatial convolutions before the tanh one.
        spatial_downsampling: int. resolution factor of the spatial branch (2019: 16 in 2D, 8 in
            3D).
        kernel_initializer: str or dict. Keras initializer identifier.
        input_shape: tuple or None. `(*spatial, channels)`, sizes may be None; default
            `(None, ..., None, 1)`.
        name: str or None. model name.

    Spatial sizes must be divisible by `lcm(2 ** (num_levels - 1), spatial_downsampling)`.

    Examples:
    >>> model = SpatialConfigurationNet2019(2, 37, filters=8, kernel_size=3, num_levels=4,
    ...     convs_per_level=2, negative_slope=0.1, dropout=0.5, spatial_kernel_size=7,
    ...     num_spatial_convs=3, spatial_downsampling=16, kernel_initializer="he_normal")
    >>> model.size_divisor
    16
    """

    architecture = "scn2019"

    def __init__(self, ndim, num_landmarks, *, filters, kernel_size, num_levels,
                 convs_per_level, negative_slope, dropout, spatial_kernel_size,
                 num_spatial_convs, spatial_downsampling, kernel_initializer,
                 input_shape=None, name=None, **kwargs):
        # === Validation ===
        factor = check_positive_int("spatial_downsampling", spatial_downsampling)
        num_levels = check_positive_int("num_levels", num_levels)
        divisor = math.lcm(2 ** (num_levels - 1), factor)
        shape, inputs = common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, divisor)
        kernel_size = check_kernel_size("kernel_size", kernel_size, ndim)
        spatial_kernel_size = check_kernel_size("spatial_kernel_size", spatial_kernel_size,
                                                 ndim)
        negative_slope = check_rate("negative_slope", negative_slope, 1)
        dropout = check_rate("dropout", dropout, 1)
        filters = check_positive_int("filters", filters)
        convs_per_level = check_positive_int("convs_per_level", convs_per_level)
        num_spatial_convs = check_positive_int("num_spatial_convs", num_spatial_convs,
                                                minimum=0)
        # === Functional model ===
        x = blocks.unet(inputs, ndim, num_levels, convs_per_level, filters, kernel_size,
                        kernel_initializer, combine="add", negative_slope=negative_slope,
                        dropout=dropout, name="local")
        local = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer,
                                    "local_heatmaps")
        spatial = blocks.spatial_configuration(local, ndim, num_landmarks, factor, num_spatial_convs,
                                         filters, spatial_kernel_size, kernel_initializer,
                                         negative_slope, "tanh")
        outputs = keras.layers.Multiply(name="heatmaps")([local, spatial])
        super().__init__(inputs, outputs, ndim, num_landmarks, shape, kernel_initializer,
                         output_stride=1, size_divisor=divisor,
                         name=name or f"scn2019_{ndim}d", **kwargs)
        # === Config ===
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_levels = num_levels
        self.convs_per_level = convs_per_level
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.spatial_kernel_size = spatial_kernel_size
        self.num_spatial_convs = num_spatial_convs
        self.spatial_downsampling = factor

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      num_levels=self.num_levels, convs_per_level=self.convs_per_level,
                      negative_slope=self.negative_slope, dropout=self.dropout,
                      spatial_kernel_size=self.spatial_kernel_size,
                      num_spatial_convs=self.num_spatial_convs,
                      spatial_downsampling=self.spatial_downsampling)
        return config


#: Layer settings per preset and dimension (`keraslm.models.presets` explains the presets).
PRESETS = {
    "paper": {
        2: dict(filters=128, kernel_size=3, num_levels=4, convs_per_level=2,
                negative_slope=0.1, dropout=0.5, spatial_kernel_size=11,
                num_spatial_convs=3, spatial_downsampling=16,
                kernel_initializer="he_normal"),
        3: dict(filters=64, kernel_size=3, num_levels=4, convs_per_level=2,
                negative_slope=0.1, dropout=0.5, spatial_kernel_size=7,
                num_spatial_convs=3, spatial_downsampling=8,
                kernel_initializer="he_normal"),
    },
    "small": {
        2: dict(filters=32, kernel_size=3, num_levels=4, convs_per_level=2,
                negative_slope=0.1, dropout=0.0, spatial_kernel_size=7,
                num_spatial_convs=3, spatial_downsampling=16,
                kernel_initializer="he_normal"),
        3: dict(filters=16, kernel_size=3, num_levels=3, convs_per_level=2,
                negative_slope=0.1, dropout=0.0, spatial_kernel_size=5,
                num_spatial_convs=3, spatial_downsampling=8,
                kernel_initializer="he_normal"),
    },
}

register_architecture(Architecture(
    name="scn2019", model_class=SpatialConfigurationNet2019, presets=PRESETS, paper_caffe_learning_rate=1e-6,
    description="the authors' 2019 SCN (Medical Image Analysis 54): U-Net local appearance x spatial configuration"))
