"""Downsampling-Net (Fig. 2a of Payer et al. 2016): convolutions and average pooling, heatmaps at a lower resolution.

The class, its presets and its registration (`keraslm.models.registry`).
"""
import keras

from keraslm.models import blocks
from keraslm.models.base import LandmarkModel, check_kernel_size, check_positive_int, common_args
from keraslm.models.presets import PAPER_INITIALIZER
from keraslm.models.registry import Architecture, register_architecture


@keras.saving.register_keras_serializable(package="keraslm")
class DownsamplingNet(LandmarkModel):
    """Downsampling-Net (Fig. 2a): blocks of convolutions + average pooling, then convolutions.

    The heatmaps have `1 / 2**num_blocks` of the input resolution.

    Args:
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of heatmaps.
        filters: int. channels of every hidden convolution.
        kernel_size: int or tuple of `ndim` ints. kernel of every hidden convolution.
        num_blocks: int. number of pooling blocks (paper: 2 in 2D, 1 in 3D).
        convs_per_block: int. convolutions per block and after the last block.
        kernel_initializer: str or dict. Keras initializer identifier.
        input_shape: tuple or None. `(*spatial, channels)`, sizes may be None; default
            `(None, ..., None, 1)`.
        name: str or None. model name.

    Examples:
    >>> model = DownsamplingNet(2, 37, filters=8, kernel_size=5, num_blocks=2,
    ...                         convs_per_block=2, kernel_initializer="he_normal")
    >>> model.output_stride, model.size_divisor
    (4, 4)
    """

    architecture = "downsampling"

    def __init__(self, ndim, num_landmarks, *, filters, kernel_size, num_blocks,
                 convs_per_block, kernel_initializer, input_shape=None, name=None, **kwargs):
        # === Validation ===
        num_blocks = check_positive_int("num_blocks", num_blocks, minimum=0)
        stride = 2 ** num_blocks
        shape, inputs = common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, stride)
        convs_per_block = check_positive_int("convs_per_block", convs_per_block)
        filters = check_positive_int("filters", filters)
        kernel_size = check_kernel_size("kernel_size", kernel_size, ndim)
        stack = dict(ndim=ndim, num_convs=convs_per_block, filters=filters,
                     kernel_size=kernel_size, kernel_initializer=kernel_initializer)
        # === Functional model ===
        x = inputs
        for block in range(num_blocks):
            x = blocks.conv_stack(x, name=f"block{block}", **stack)
            x = blocks.downsample(x, ndim, 2, name=f"block{block}_pool")
        x = blocks.conv_stack(x, name="top", **stack)
        outputs = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer, "heatmaps")
        super().__init__(inputs, outputs, ndim, num_landmarks, shape, kernel_initializer,
                         output_stride=stride, size_divisor=stride,
                         name=name or f"downsampling_{ndim}d", **kwargs)
        # === Config ===
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_blocks = num_blocks
        self.convs_per_block = convs_per_block

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      num_blocks=self.num_blocks, convs_per_block=self.convs_per_block)
        return config




#: Layer settings per preset and dimension (`keraslm.models.presets` explains the presets).
PRESETS = {
    "paper": {
        2: dict(filters=128, kernel_size=5, num_blocks=2, convs_per_block=2,
                kernel_initializer=PAPER_INITIALIZER),
        3: dict(filters=64, kernel_size=3, num_blocks=1, convs_per_block=2,
                kernel_initializer=PAPER_INITIALIZER),
    },
    "small": {
        2: dict(filters=32, kernel_size=5, num_blocks=2, convs_per_block=2,
                kernel_initializer="he_normal"),
        3: dict(filters=16, kernel_size=3, num_blocks=1, convs_per_block=2,
                kernel_initializer="he_normal"),
    },
}

register_architecture(Architecture(
    name="downsampling", model_class=DownsamplingNet, presets=PRESETS, paper_caffe_learning_rate=1e-5,
    description="Downsampling-Net (Fig. 2a of Payer et al. 2016): convolutions and average pooling, heatmaps at a lower resolution"))
