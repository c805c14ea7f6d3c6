"""SpatialConfiguration-Net (Fig. 2d, Eqs. 1-3): local appearance x spatial configuration of the landmarks.

The class, its presets and its registration (`keraslm.models.registry`).
"""
import keras

from keraslm.models import blocks
from keraslm.models.base import LandmarkModel, check_kernel_size, check_positive_int, common_args
from keraslm.models.presets import PAPER_INITIALIZER
from keraslm.models.registry import Architecture, register_architecture


@keras.saving.register_keras_serializable(package="keraslm")
class SpatialConfigurationNet(LandmarkModel):
    """SpatialConfiguration-Net (Fig. 2d, Eqs. 1-3 of the 2016 paper).

    Local appearance: `num_local_convs` ReLU convolutions and a kernel-1 convolution give
    `H_app` (one map per landmark). Spatial configuration: `H_app` is average-pooled by
    `spatial_downsampling`, convolved by one linear convolution from all landmark channels to
    all landmark channels with the large `spatial_kernel_size` (Eqs. 1-2) and upsampled back by
    fixed linear interpolation, giving `H_acc`. Output: `H = H_app * H_acc` (Eq. 3).

    Args:
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of heatmaps.
        filters: int. channels of the local convolutions.
        kernel_size: int or tuple of `ndim` ints. kernel of the local convolutions.
        num_local_convs: int. number of local ReLU convolutions (paper: 3).
        spatial_kernel_size: int or tuple of `ndim` ints. kernel `K_ij` (paper: 15x15, 9x9x5).
        spatial_downsampling: int. resolution factor of the spatial block (paper: 8 in 2D, 4 in
            3D); spatial sizes must be divisible by it.
        kernel_initializer: str or dict. Keras initializer identifier.
        input_shape: tuple or None. `(*spatial, channels)`, sizes may be None; default
            `(None, ..., None, 1)`.
        name: str or None. model name.

    Examples:
    >>> model = SpatialConfigurationNet(2, 37, filters=8, kernel_size=5, num_local_convs=3,
    ...     spatial_kernel_size=15, spatial_downsampling=8, kernel_initializer="he_normal")
    >>> model.output_stride, model.size_divisor
    (1, 8)
    """

    architecture = "scn"

    def __init__(self, ndim, num_landmarks, *, filters, kernel_size, num_local_convs,
                 spatial_kernel_size, spatial_downsampling, kernel_initializer,
                 input_shape=None, name=None, **kwargs):
        # === Validation ===
        factor = check_positive_int("spatial_downsampling", spatial_downsampling)
        shape, inputs = common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, factor)
        kernel_size = check_kernel_size("kernel_size", kernel_size, ndim)
        spatial_kernel_size = check_kernel_size("spatial_kernel_size", spatial_kernel_size,
                                                 ndim)
        num_local_convs = check_positive_int("num_local_convs", num_local_convs)
        filters = check_positive_int("filters", filters)
        # === Functional model ===
        x = blocks.conv_stack(inputs, ndim, num_local_convs, filters, kernel_size,
                              kernel_initializer, name="local")
        local = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer,
                                    "local_heatmaps")
        spatial = blocks.spatial_configuration(local, ndim, num_landmarks, factor, 0, filters,
                                         spatial_kernel_size, kernel_initializer, 0.0, None)
        outputs = keras.layers.Multiply(name="heatmaps")([local, spatial])
        super().__init__(inputs, outputs, ndim, num_landmarks, shape, kernel_initializer,
                         output_stride=1, size_divisor=factor, name=name or f"scn_{ndim}d",
                         **kwargs)
        # === Config ===
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_local_convs = num_local_convs
        self.spatial_kernel_size = spatial_kernel_size
        self.spatial_downsampling = factor

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      num_local_convs=self.num_local_convs,
                      spatial_kernel_size=self.spatial_kernel_size,
                      spatial_downsampling=self.spatial_downsampling)
        return config




#: Layer settings per preset and dimension (`keraslm.models.presets` explains the presets).
PRESETS = {
    "paper": {
        2: dict(filters=128, kernel_size=5, num_local_convs=3, spatial_kernel_size=15,
                spatial_downsampling=8, kernel_initializer=PAPER_INITIALIZER),
        3: dict(filters=64, kernel_size=3, num_local_convs=3, spatial_kernel_size=(5, 9, 9),
                spatial_downsampling=4, kernel_initializer=PAPER_INITIALIZER),
    },
    "small": {
        2: dict(filters=32, kernel_size=5, num_local_convs=3, spatial_kernel_size=15,
                spatial_downsampling=8, kernel_initializer="he_normal"),
        3: dict(filters=16, kernel_size=3, num_local_convs=3, spatial_kernel_size=(5, 9, 9),
                spatial_downsampling=4, kernel_initializer="he_normal"),
    },
}

register_architecture(Architecture(
    name="scn", model_class=SpatialConfigurationNet, presets=PRESETS, paper_caffe_learning_rate=1e-6,
    description="SpatialConfiguration-Net (Fig. 2d, Eqs. 1-3): local appearance x spatial configuration of the landmarks"))
