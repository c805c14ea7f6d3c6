"""The heatmap regression networks of Payer et al. 2016 (and the authors' 2019 SCN), 2D and 3D.

Every network is a functional `keras.Model` subclass of `LandmarkModel` that maps channels-last
images `(batch, dim_0, ..., dim_{ndim-1}, channels)` to heatmaps
`(batch, dim_0 / output_stride, ..., dim_{ndim-1} / output_stride, num_landmarks)`. Every
spatial input size must be divisible by `size_divisor`; sizes may be None (fully convolutional).
Constructors take the settings of `keraslm.models.presets` as keyword arguments, and
`get_config` returns exactly the constructor arguments.
"""
import math
import numbers

import keras

from keraslm.errors import UsageError
from keraslm.models import blocks
from keraslm.models.presets import get_preset


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_positive_int(arg, value, minimum=1):
    if not _is_int(value) or value < minimum:
        raise UsageError(f"`{arg}` must be an int >= {minimum}. Received: {arg}={value!r}")
    return int(value)


def _check_kernel_size(arg, value, ndim):
    """An int or a tuple of `ndim` positive ints, returned as an int or a tuple."""
    if _is_int(value) and value >= 1:
        return int(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == ndim
        and all(_is_int(v) and v >= 1 for v in value)
    ):
        return tuple(int(v) for v in value)
    raise UsageError(
        f"`{arg}` must be a positive int or a tuple of {ndim} positive ints for ndim={ndim}. "
        f"Received: {arg}={value!r}"
    )


def _check_rate(arg, value, upper):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < upper:
        raise UsageError(f"`{arg}` must be a number in [0, {upper}). Received: {arg}={value!r}")
    return float(value)


def _check_initializer(value):
    try:
        keras.initializers.get(value)
    except (ValueError, TypeError) as error:
        raise UsageError(
            f"Unknown `kernel_initializer`. Received: kernel_initializer={value!r}"
        ) from error
    return value


def _check_input_shape(input_shape, ndim, size_divisor, architecture):
    """Validate `(*spatial, channels)`; spatial sizes None or multiples of `size_divisor`."""
    if input_shape is None:
        return (None,) * ndim + (1,)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != ndim + 1
        or not all(d is None or (_is_int(d) and d >= 1) for d in shape[:-1])
        or not (_is_int(shape[-1]) and shape[-1] >= 1)
    ):
        raise UsageError(
            f"`input_shape` must be (*spatial, channels) with {ndim} spatial sizes (int or "
            f"None) and an int number of channels for ndim={ndim}. "
            f"Received: input_shape={input_shape!r}"
        )
    if any(d is not None and d % size_divisor for d in shape[:-1]):
        raise UsageError(
            f"architecture={architecture!r} needs every spatial size divisible by "
            f"{size_divisor}. Received: input_shape={input_shape!r}"
        )
    return tuple(None if d is None else int(d) for d in shape)


class LandmarkModel(keras.Model):
    """Base of the keraslm networks: a functional model that knows its output geometry.

    Subclasses build the graph and pass it here with the settings shared by every network.

    Args:
        inputs: KerasTensor. the image input `(batch, *spatial, channels)`.
        outputs: KerasTensor. the heatmaps `(batch, *spatial_out, num_landmarks)`.
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of heatmaps.
        input_shape: tuple. `(*spatial, channels)` without the batch axis, sizes may be None.
        kernel_initializer: str or dict. Keras initializer identifier of every convolution.
        output_stride: int. input pixels per heatmap pixel along every spatial axis.
        size_divisor: int. every spatial input size must be a multiple of it.
        **kwargs: `name`, `trainable`.

    Attributes:
        architecture: str. the architecture name used by `build_model`.
        ndim: int. number of spatial dimensions.
        num_landmarks: int. number of heatmaps.
        image_shape: tuple. the `input_shape` argument, `(*spatial, channels)`.
        output_stride: int. input pixels per heatmap pixel along every spatial axis. Heatmap
            index `i` is the average over input indices `[i * s, (i + 1) * s)` (s the stride),
            so its centre lies at input index `i * s + (s - 1) / 2`.
        size_divisor: int. required divisor of every spatial input size.

    Calling the model checks static input shapes first: rank `ndim + 2`, every known spatial
    size divisible by `size_divisor` and the number of channels, each failure a ValueError
    that names `inputs.shape` and its value.
    """

    architecture = None

    def __init__(self, inputs, outputs, ndim, num_landmarks, input_shape, kernel_initializer,
                 output_stride, size_divisor, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.ndim = ndim
        self.num_landmarks = int(num_landmarks)
        self.image_shape = tuple(input_shape)
        self.kernel_initializer = kernel_initializer
        self.output_stride = output_stride
        self.size_divisor = size_divisor

    def output_spatial_shape(self, spatial_shape):
        """Heatmap spatial shape for an input spatial shape.

        spatial_shape: tuple of ints or None. input spatial sizes, `ndim` of them.
        """
        self._check_spatial(tuple(spatial_shape), "spatial_shape")
        return tuple(None if d is None else d // self.output_stride for d in spatial_shape)

    def _check_spatial(self, spatial, arg):
        if len(spatial) != self.ndim:
            raise UsageError(
                f"Model '{self.name}' is {self.ndim}D and needs {self.ndim} spatial sizes. "
                f"Received: {arg}={spatial}"
            )
        if any(d is not None and d % self.size_divisor for d in spatial):
            raise UsageError(
                f"Model '{self.name}' ({self.architecture}, {self.ndim}D) needs every spatial "
                f"size divisible by {self.size_divisor}. Received: {arg}={spatial}"
            )

    def __call__(self, *args, **kwargs):
        inputs = args[0] if args else kwargs.get("inputs")
        shape = getattr(inputs, "shape", None)
        if shape is not None:
            shape = tuple(shape)
            if len(shape) != self.ndim + 2:
                raise UsageError(
                    f"Model '{self.name}' is {self.ndim}D and expects inputs of rank "
                    f"{self.ndim + 2}, (batch, {self.ndim} spatial sizes, channels). "
                    f"Received: inputs.shape={shape}"
                )
            self._check_spatial(shape[1:-1], "inputs.shape[1:-1]")
            if shape[-1] is not None and shape[-1] != self.image_shape[-1]:
                raise UsageError(
                    f"Model '{self.name}' expects {self.image_shape[-1]} input channel(s). "
                    f"Received: inputs.shape={shape}"
                )
        return super().__call__(*args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "ndim": self.ndim,
            "num_landmarks": self.num_landmarks,
            "input_shape": list(self.image_shape),
            "kernel_initializer": self.kernel_initializer,
        }


def _common_args(architecture, ndim, num_landmarks, input_shape, kernel_initializer,
                 size_divisor):
    """Validate the shared arguments and create the input tensor."""
    blocks.check_ndim(ndim)
    _check_positive_int("num_landmarks", num_landmarks)
    _check_initializer(kernel_initializer)
    shape = _check_input_shape(input_shape, ndim, size_divisor, architecture)
    return shape, keras.Input(shape=shape, name="image")


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
        num_blocks = _check_positive_int("num_blocks", num_blocks, minimum=0)
        stride = 2 ** num_blocks
        shape, inputs = _common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, stride)
        convs_per_block = _check_positive_int("convs_per_block", convs_per_block)
        filters = _check_positive_int("filters", filters)
        kernel_size = _check_kernel_size("kernel_size", kernel_size, ndim)
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
        shape, inputs = _common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, 1)
        kernel_size = _check_kernel_size("kernel_size", kernel_size, ndim)
        num_convs = _check_positive_int("num_convs", num_convs)
        filters = _check_positive_int("filters", filters)
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
        num_levels = _check_positive_int("num_levels", num_levels)
        divisor = 2 ** (num_levels - 1)
        shape, inputs = _common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, divisor)
        kernel_size = _check_kernel_size("kernel_size", kernel_size, ndim)
        convs_per_level = _check_positive_int("convs_per_level", convs_per_level)
        filters = _check_positive_int("filters", filters)
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


def _spatial_configuration(local, ndim, num_landmarks, factor, num_convs, filters,
                           kernel_size, kernel_initializer, negative_slope, activation):
    """Spatial configuration block: pool the local heatmaps, large-kernel convs, upsample.

    The last convolution maps to `num_landmarks` channels, so with `num_convs=0` it is exactly
    Eqs. 1-2 of the paper: `H_acc_i = sum_j H_app_j * K_ij`.
    """
    x = blocks.downsample(local, ndim, factor, name="spatial_pool")
    x = blocks.conv_stack(x, ndim, num_convs, filters, kernel_size, kernel_initializer,
                          negative_slope=negative_slope, name="spatial")
    x = blocks.conv(x, ndim, num_landmarks, kernel_size, kernel_initializer,
                    activation=activation, name="spatial_heatmaps")
    return blocks.upsample(x, ndim, factor, name="spatial_upsample")


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
        factor = _check_positive_int("spatial_downsampling", spatial_downsampling)
        shape, inputs = _common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, factor)
        kernel_size = _check_kernel_size("kernel_size", kernel_size, ndim)
        spatial_kernel_size = _check_kernel_size("spatial_kernel_size", spatial_kernel_size,
                                                 ndim)
        num_local_convs = _check_positive_int("num_local_convs", num_local_convs)
        filters = _check_positive_int("filters", filters)
        # === Functional model ===
        x = blocks.conv_stack(inputs, ndim, num_local_convs, filters, kernel_size,
                              kernel_initializer, name="local")
        local = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer,
                                    "local_heatmaps")
        spatial = _spatial_configuration(local, ndim, num_landmarks, factor, 0, filters,
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
        factor = _check_positive_int("spatial_downsampling", spatial_downsampling)
        num_levels = _check_positive_int("num_levels", num_levels)
        divisor = math.lcm(2 ** (num_levels - 1), factor)
        shape, inputs = _common_args(self.architecture, ndim, num_landmarks, input_shape,
                                     kernel_initializer, divisor)
        kernel_size = _check_kernel_size("kernel_size", kernel_size, ndim)
        spatial_kernel_size = _check_kernel_size("spatial_kernel_size", spatial_kernel_size,
                                                 ndim)
        negative_slope = _check_rate("negative_slope", negative_slope, 1)
        dropout = _check_rate("dropout", dropout, 1)
        filters = _check_positive_int("filters", filters)
        convs_per_level = _check_positive_int("convs_per_level", convs_per_level)
        num_spatial_convs = _check_positive_int("num_spatial_convs", num_spatial_convs,
                                                minimum=0)
        # === Functional model ===
        x = blocks.unet(inputs, ndim, num_levels, convs_per_level, filters, kernel_size,
                        kernel_initializer, combine="add", negative_slope=negative_slope,
                        dropout=dropout, name="local")
        local = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer,
                                    "local_heatmaps")
        spatial = _spatial_configuration(local, ndim, num_landmarks, factor, num_spatial_convs,
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


#: Architecture name -> model class, the names `build_model` accepts.
ARCHITECTURES = {
    cls.architecture: cls
    for cls in (DownsamplingNet, ConvOnlyNet, UNet, SpatialConfigurationNet,
                SpatialConfigurationNet2019)
}


def build_model(architecture, ndim, num_landmarks, preset="paper", input_shape=None,
                **overrides):
    """Build a heatmap regression network from a preset, with settings overridden by keyword.

    architecture: str. `"downsampling"`, `"convonly"`, `"unet"`, `"scn"` or `"scn2019"`.
    ndim: int. number of spatial dimensions, 2 or 3.
    num_landmarks: int. number of heatmaps (output channels), >= 1.
    preset: str. `"paper"` (Payer et al. 2016, Section 3) or `"small"` (CPU-sized); see
        `keraslm.models.PRESETS`.
    input_shape: tuple or None. `(*spatial, channels)` without the batch axis; spatial sizes
        may be None and must otherwise be divisible by the model's `size_divisor`. Default
        `(None,) * ndim + (1,)`.
    **overrides: any setting of the preset (e.g. `filters=16`, `kernel_size=(3, 3, 1)`,
        `kernel_initializer="he_normal"`) and `name`.

    Returns a `LandmarkModel` mapping `(batch, *spatial, channels)` images to
    `(batch, *spatial / output_stride, num_landmarks)` heatmaps, with attributes
    `architecture`, `ndim`, `num_landmarks`, `output_stride` and `size_divisor`.

    Raises ValueError naming the argument for an unknown architecture, preset or setting, an
    `ndim` other than 2 or 3, `num_landmarks < 1` or an input size violating the constraint.

    Examples:
    >>> model = build_model("unet", 2, 37, preset="small", input_shape=(128, 96, 1))
    >>> model.output_shape
    (None, 128, 96, 37)
    >>> build_model("downsampling", 3, 28).output_stride
    2
    """
    if architecture not in ARCHITECTURES:
        raise UsageError(
            f"Unknown `architecture`. Expected one of {sorted(ARCHITECTURES)}. "
            f"Received: architecture={architecture!r}"
        )
    blocks.check_ndim(ndim)
    settings = get_preset(preset, architecture, ndim)
    allowed = set(settings) | {"name"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise UsageError(
            f"Unknown setting {unknown[0]!r} for architecture={architecture!r}. Expected one "
            f"of {sorted(allowed)}. Received: {unknown[0]}={overrides[unknown[0]]!r}"
        )
    settings.update(overrides)
    return ARCHITECTURES[architecture](ndim, num_landmarks, input_shape=input_shape, **settings)
