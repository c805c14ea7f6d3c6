"""Fixed (non-trainable) linear upsampling for 2D and 3D feature maps.

Convention: half-pixel centres with edge clamping, the convention of
`tf.image.resize(..., method="bilinear")` (`align_corners=False`, `half_pixel_centers=True`).
Along one spatial axis of length `n` upsampled by an integer `factor`, output index `o` reads
the input at the continuous coordinate `s = (o + 0.5) / factor - 0.5`, clamped to `[0, n - 1]`:

    out[o] = (1 - t) * x[floor(s)] + t * x[floor(s) + 1],   t = s - floor(s),

with indices beyond the edges clamped to `0` and `n - 1`. For `factor=2` the weights are
0.25 / 0.75. The interpolation is separable: the layer applies it along each spatial axis in
turn (first spatial axis first), which equals bi-/trilinear interpolation.

The layer uses only slicing, concatenation, stacking and reshaping with shapes read at run time,
so it works with `None` spatial sizes, in XLA, and in an exported SavedModel.
"""
import keras
from keras import ops

from keraslm.errors import UsageError


def _phase_weights(factor):
    """Interpolation taps of each output phase along one axis.

    Args:
        factor: int. upsampling factor.

    Returns:
        a list of `factor` pairs `((offset_a, weight_a), (offset_b, weight_b))`: output
        `factor * i + r` is `weight_a * x[i + offset_a] + weight_b * x[i + offset_b]`.
    """
    phases = []
    for r in range(factor):
        shift = (r + 0.5) / factor - 0.5  # source coordinate minus i, in (-0.5, 0.5)
        if shift < 0:
            t = 1.0 + shift
            phases.append(((-1, 1.0 - t), (0, t)))
        else:
            phases.append(((0, 1.0 - shift), (1, shift)))
    return phases


@keras.saving.register_keras_serializable(package="keraslm")
class LinearUpsampling(keras.layers.Layer):
    """Fixed linear upsampling of a channels-last 2D or 3D feature map.

    Each spatial axis is enlarged by an integer factor with linear interpolation, half-pixel
    centres and edge clamping (see the module docstring for the exact formula). The layer has
    no weights.

    Args:
        size: int or tuple of ints. upsampling factor, one per spatial axis (2 or 3 of them).
            An int is used for every spatial axis of the input.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input shape: `(batch, dim_0, ..., dim_{N-1}, channels)` with N = 2 or 3; any dim may be None.
    Output shape: `(batch, dim_0 * size_0, ..., dim_{N-1} * size_{N-1}, channels)`.

    Examples:
    >>> layer = LinearUpsampling(size=2)
    >>> layer(np.zeros((1, 5, 7, 3), "float32")).shape
    TensorShape([1, 10, 14, 3])
    """

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        single = isinstance(size, int)
        sizes = (size,) if single else tuple(size) if isinstance(size, (tuple, list)) else ()
        if (
            not (single or len(sizes) in (2, 3))
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)
        ):
            raise UsageError(
                "`size` must be a positive int or a tuple of 2 or 3 positive ints. "
                f"Received: size={size}"
            )
        self.size = size if single else sizes

    def _sizes(self, rank):
        ndim = rank - 2
        if ndim not in (2, 3):
            raise UsageError(
                f"LinearUpsampling '{self.name}' expects a channels-last 2D or 3D input of "
                f"rank 4 or 5. Received: input rank={rank}"
            )
        if isinstance(self.size, int):
            return (self.size,) * ndim
        if len(self.size) != ndim:
            raise UsageError(
                f"LinearUpsampling '{self.name}' has one factor per spatial axis, but the input "
                f"has {ndim} spatial axes. Received: size={self.size}"
            )
        return self.size

    def build(self, input_shape):
        self._sizes(len(input_shape))
        self.built = True

    def call(self, inputs):
        x = inputs
        for axis, factor in enumerate(self._sizes(len(inputs.shape)), start=1):
            if factor > 1:
                x = _upsample_axis(x, axis, factor)
        return x

    def compute_output_shape(self, input_shape):
        sizes = self._sizes(len(input_shape))
        spatial = [None if d is None else d * f for d, f in zip(input_shape[1:-1], sizes)]
        return (input_shape[0], *spatial, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["size"] = self.size
        return config


def _upsample_axis(x, axis, factor):
    """Linearly upsample `x` along one axis by an integer factor (half-pixel, clamped edges)."""
    n = ops.shape(x)[axis]
    first = ops.take(x, ops.convert_to_tensor([0]), axis=axis)
    last = ops.take(x, ops.expand_dims(n - 1, 0), axis=axis)
    padded = ops.concatenate([first, x, last], axis=axis)  # padded[i + 1] == x[i]

    def shifted(offset):
        start = [0] * len(x.shape)
        start[axis] = 1 + offset
        return ops.slice(padded, start, ops.shape(x))

    phases = [
        weight_a * shifted(offset_a) + weight_b * shifted(offset_b)
        for (offset_a, weight_a), (offset_b, weight_b) in _phase_weights(factor)
    ]
    stacked = ops.stack(phases, axis=axis + 1)  # (..., n, factor, ...)
    shape = list(ops.shape(x))
    shape[axis] = n * factor
    return ops.reshape(stacked, shape)
