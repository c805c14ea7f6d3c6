"""The base of keraslm's networks: `LandmarkModel` and the argument checks every architecture
shares.

Every network is a functional `keras.Model` subclass of `LandmarkModel` that maps channels-last
images `(batch, dim_0, ..., dim_{ndim-1}, channels)` to heatmaps
`(batch, dim_0 / output_stride, ..., dim_{ndim-1} / output_stride, num_landmarks)`. Every
spatial input size must be divisible by `size_divisor`; sizes may be None (fully convolutional).
Constructors take the settings of the architecture's presets as keyword arguments, and
`get_config` returns exactly the constructor arguments.
"""
import numbers

import keras

from keraslm.errors import UsageError
from keraslm.models import blocks


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(arg, value, minimum=1):
    if not is_int(value) or value < minimum:
        raise UsageError(f"`{arg}` must be an int >= {minimum}. Received: {arg}={value!r}")
    return int(value)


def check_kernel_size(arg, value, ndim):
    """An int or a tuple of `ndim` positive ints, returned as an int or a tuple."""
    if is_int(value) and value >= 1:
        return int(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == ndim
        and all(is_int(v) and v >= 1 for v in value)
    ):
        return tuple(int(v) for v in value)
    raise UsageError(
        f"`{arg}` must be a positive int or a tuple of {ndim} positive ints for ndim={ndim}. "
        f"Received: {arg}={value!r}"
    )


def check_rate(arg, value, upper):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < upper:
        raise UsageError(f"`{arg}` must be a number in [0, {upper}). Received: {arg}={value!r}")
    return float(value)


def check_initializer(value):
    try:
        keras.initializers.get(value)
    except (ValueError, TypeError) as error:
        raise UsageError(
            f"Unknown `kernel_initializer`. Received: kernel_initializer={value!r}"
        ) from error
    return value


def check_input_shape(input_shape, ndim, size_divisor, architecture):
    """Validate `(*spatial, channels)`; spatial sizes None or multiples of `size_divisor`."""
    if input_shape is None:
        return (None,) * ndim + (1,)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != ndim + 1
        or not all(d is None or (is_int(d) and d >= 1) for d in shape[:-1])
        or not (is_int(shape[-1]) and shape[-1] >= 1)
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

        Args:
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


def common_args(architecture, ndim, num_landmarks, input_shape, kernel_initializer,
                 size_divisor):
    """Validate the shared arguments and create the input tensor."""
    blocks.check_ndim(ndim)
    check_positive_int("num_landmarks", num_landmarks)
    check_initializer(kernel_initializer)
    shape = check_input_shape(input_shape, ndim, size_divisor, architecture)
    return shape, keras.Input(shape=shape, name="image")
