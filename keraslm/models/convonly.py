"""ConvOnly-Net (Fig. 2b): convolutions with large kernels at full resolution.

The class, its presets and its registration (`keraslm.models.registry`).
"""
import keras

from keraslm.models import blocks
from keraslm.models.base import LandmarkModel, check_kernel_size, check_positive_int, common_args
from keraslm.models.presets import PAPER_INITIALIZER
from keraslm.models.registry import Architecture, register_architecture


@keras.saving.register_keras_serializable(package="keraslm")
class ConvOnlyNet(LandmarkModel):
    """ConvOnly-Net (Fig. 2b): large-kernel convolutions at full resolution, no pooling.

    Args:
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of heatmaps.
        filters: int. channels of every hidden convolution.
        kernel_size: int or tuple of `ndim` ints. kernel of every hidden convolution.
        num_convs: int. number of hidden convolutions (paper: 6).
        kernel_initializer: str or dict. Keras initializer identifier.
        input_shape: tuple or None. `(*spatial, channels)`, sizes may be None; default
            `(None, ..., None, 1)`.
        name: str or None. model name.

    Examples:
    >>> model = ConvOnlyNet(3, 28, filters=4, kernel_size=3, num_convs=2,
    ...                     kernel_initializer="he_normal")
    >>> model.output_shape
    (None, None, None, None, 28)
    """

    architecture = "convonly"

    def __init__(self, ndim, num_landmarks, *, filters, kernel_size, num_convs,
                 kernel_initializer, input_shape=None, name=None, **kwargs):
        # === Validation ===
        shape, inputs = common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, 1)
        kernel_size = check_kernel_size("kernel_size", kernel_size, ndim)
        num_convs = check_positive_int("num_convs", num_convs)
        filters = check_positive_int("filters", filters)
        # === Functional model ===
        x = blocks.conv_stack(inputs, ndim, num_convs, filters, kernel_size,
                              kernel_initializer, name="convs")
        outputs = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer, "heatmaps")
        super().__init__(inputs, outputs, ndim, num_landmarks, shape, kernel_initializer,
                         output_stride=1, size_divisor=1, name=name or f"convonly_{ndim}d",
                         **kwargs)
        # === Config ===
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_convs = num_convs

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      num_convs=self.num_convs)
        return config




#: Layer settings per preset and dimension (`keraslm.models.presets` explains the presets).
PRESETS = {
    "paper": {
        2: dict(filters=128, kernel_size=11, num_convs=6,
                kernel_initializer=PAPER_INITIALIZER),
        3: dict(filters=32, kernel_size=5, num_convs=6,
                kernel_initializer=PAPER_INITIALIZER),
    },
    "small": {
        2: dict(filters=16, kernel_size=7, num_convs=6, kernel_initializer="he_normal"),
        3: dict(filters=8, kernel_size=3, num_convs=6, kernel_initializer="he_normal"),
    },
}

register_architecture(Architecture(
    name="convonly", model_class=ConvOnlyNet, presets=PRESETS, paper_caffe_learning_rate=1e-5,
    description="ConvOnly-Net (Fig. 2b): convolutions with large kernels at full resolution"))
