"""U-Net (Fig. 2c): contracting and expanding paths with skips.

The class, its presets and its registration (`keraslm.models.registry`).
"""
import keras

from keraslm.models import blocks
from keraslm.models.base import LandmarkModel, check_kernel_size, check_positive_int, common_args
from keraslm.models.presets import PAPER_INITIALIZER
from keraslm.models.registry import Architecture, register_architecture


@keras.saving.register_keras_serializable(package="keraslm")
class UNet(LandmarkModel):
    """U-Net (Fig. 2c) with average pooling, fixed linear upsampling and concatenated skips.

    Args:
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of heatmaps.
        filters: int. channels of every hidden convolution (constant over levels).
        kernel_size: int or tuple of `ndim` ints. kernel of every hidden convolution.
        num_levels: int. resolution levels, `num_levels - 1` pooling steps (paper: 4 in 2D,
            3 in 3D); spatial sizes must be divisible by `2 ** (num_levels - 1)`.
        convs_per_level: int. convolutions per level on each path.
        kernel_initializer: str or dict. Keras initializer identifier.
        input_shape: tuple or None. `(*spatial, channels)`, sizes may be None; default
            `(None, ..., None, 1)`.
        name: str or None. model name.

    Examples:
    >>> model = UNet(2, 37, filters=8, kernel_size=3, num_levels=4, convs_per_level=2,
    ...              kernel_initializer="he_normal")
    >>> model.size_divisor
    8
    """

    architecture = "unet"

    def __init__(self, ndim, num_landmarks, *, filters, kernel_size, num_levels,
                 convs_per_level, kernel_initializer, input_shape=None, name=None, **kwargs):
        # === Validation ===
        num_levels = check_positive_int("num_levels", num_levels)
        divisor = 2 ** (num_levels - 1)
        shape, inputs = common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, divisor)
        kernel_size = check_kernel_size("kernel_size", kernel_size, ndim)
        convs_per_level = check_positive_int("convs_per_level", convs_per_level)
        filters = check_positive_int("filters", filters)
        # === Functional model ===
        x = blocks.unet(inputs, ndim, num_levels, convs_per_level, filters, kernel_size,
                        kernel_initializer, combine="concat", name="unet")
        outputs = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer, "heatmaps")
        super().__init__(inputs, outputs, ndim, num_landmarks, shape, kernel_initializer,
                         output_stride=1, size_divisor=divisor, name=name or f"unet_{ndim}d",
                         **kwargs)
        # === Config ===
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_levels = num_levels
        self.convs_per_level = convs_per_level

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      num_levels=self.num_levels, convs_per_level=self.convs_per_level)
        return config


#: Layer settings per preset and dimension (`keraslm.models.presets` explains the presets).
PRESETS = {
    "paper": {
        2: dict(filters=128, kernel_size=3, num_levels=4, convs_per_level=2,
                kernel_initializer=PAPER_INITIALIZER),
        3: dict(filters=64, kernel_size=3, num_levels=3, convs_per_level=2,
                kernel_initializer=PAPER_INITIALIZER),
    },
    "small": {
        2: dict(filters=32, kernel_size=3, num_levels=4, convs_per_level=2,
                kernel_initializer="he_normal"),
        3: dict(filters=16, kernel_size=3, num_levels=3, convs_per_level=2,
                kernel_initializer="he_normal"),
    },
}

register_architecture(Architecture(
    name="unet", model_class=UNet, presets=PRESETS, paper_caffe_learning_rate=1e-6,
    description="U-Net (Fig. 2c): contracting and expanding paths with skips"))
