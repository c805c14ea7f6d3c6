"""Building blocks shared by the keraslm networks, for 2D and 3D from one `ndim` argument.

`layer_classes` is the only place where a concrete 2D or 3D Keras layer class is chosen. Every
block is a plain function `block(x, ndim, ..., name=...)` whose layers get deterministic names
derived from `name` (`f"{name}_conv0"`, ...), so weights and exported signatures stay stable.
Tensors are channels-last: `(batch, dim_0, ..., dim_{ndim-1}, channels)`.

Every network starts at the all-zero heatmap (`heatmap_head`: zero kernel and bias), and an
SCN's spatial configuration starts as the constant factor 1 (`spatial_configuration`: zero
kernel, bias 1), so an SCN starts as its local-appearance part alone: the first error signal is
the targets', while the hidden features keep their random initialisation. (A random start on a
grid where the targets cover a small share of the voxels spends its first steps removing its
random output and can silence its features on the way; docs/guides/training.md, "Design
notes".)
"""
import keras

from keraslm.errors import UsageError
from keraslm.models.layers import LinearUpsampling

_LAYER_CLASSES = {
    2: {"conv": keras.layers.Conv2D, "pool": keras.layers.AveragePooling2D},
    3: {"conv": keras.layers.Conv3D, "pool": keras.layers.AveragePooling3D},
}


def check_ndim(ndim):
    """Validate a number of spatial dimensions.

    Args:
        ndim: int. number of spatial dimensions, 2 or 3.

    Raises:
        ValueError: naming the value when it is neither 2 nor 3.
    """
    if isinstance(ndim, bool) or ndim not in _LAYER_CLASSES:
        raise UsageError(f"`ndim` must be 2 or 3. Received: ndim={ndim!r}")
    return ndim


def layer_classes(ndim):
    """The concrete Keras layer classes for `ndim` spatial dimensions.

    Args:
        ndim: int. number of spatial dimensions, 2 or 3.

    Returns:
        a dict with keys `"conv"` and `"pool"`.
    """
    return _LAYER_CLASSES[check_ndim(ndim)]


def conv(x, ndim, filters, kernel_size, kernel_initializer, activation="relu",
         negative_slope=0.0, name=None, bias_initializer="zeros"):
    """One convolution with 'same' padding, a bias (zero-initialised by default) and an
    activation.

    Args:
        x: tensor. input `(batch, *spatial, channels)`.
        ndim: int. number of spatial dimensions, 2 or 3.
        filters: int. output channels.
        kernel_size: int or tuple of `ndim` ints. kernel extent per spatial axis.
        kernel_initializer: str or dict. Keras initializer identifier; every layer gets its own
            instance, so unseeded initializers draw different values per layer.
        activation: str or None. `"relu"` (leaky when `negative_slope > 0`), `"tanh"` or None.
        negative_slope: float. slope for negative inputs when `activation="relu"`; a separate
            `LeakyReLU` layer named `f"{name}_act"` is added when it is positive.
        name: str. layer name.
        bias_initializer: str. Keras initializer identifier of the bias.
    """
    leaky = activation == "relu" and negative_slope > 0
    x = layer_classes(ndim)["conv"](
        filters,
        kernel_size,
        padding="same",
        activation=None if leaky else activation,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        name=name,
    )(x)
    if leaky:
        x = keras.layers.LeakyReLU(negative_slope=negative_slope, name=f"{name}_act")(x)
    return x


def conv_stack(x, ndim, num_convs, filters, kernel_size, kernel_initializer,
               negative_slope=0.0, dropout=0.0, name=None):
    """`num_convs` ReLU convolutions named `f"{name}_conv{i}"`.

    Args:
        x: tensor. input `(batch, *spatial, channels)`.
        ndim: int. number of spatial dimensions, 2 or 3.
        num_convs: int. number of convolutions.
        filters: int. output channels of every convolution.
        kernel_size: int or tuple of `ndim` ints. kernel extent per spatial axis.
        kernel_initializer: str or dict. Keras initializer identifier.
        negative_slope: float. leaky ReLU slope, 0 for plain ReLU.
        dropout: float. dropout rate after the first convolution (layer `f"{name}_dropout"`),
            0 for none.
        name: str. prefix of the layer names.
    """
    for i in range(num_convs):
        x = conv(x, ndim, filters, kernel_size, kernel_initializer,
                 negative_slope=negative_slope, name=f"{name}_conv{i}")
        if i == 0 and dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def downsample(x, ndim, factor, name=None):
    """Average pooling dividing every spatial size by `factor`.

    Args:
        x: tensor. input `(batch, *spatial, channels)`, spatial sizes divisible by `factor`.
        ndim: int. number of spatial dimensions, 2 or 3.
        factor: int. pooling size and stride.
        name: str. layer name.
    """
    return layer_classes(ndim)["pool"](pool_size=factor, strides=factor, name=name)(x)


def upsample(x, ndim, factor, name=None):
    """Fixed linear upsampling multiplying every spatial size by `factor`.

    Args:
        x: tensor. input `(batch, *spatial, channels)`.
        ndim: int. number of spatial dimensions, 2 or 3.
        factor: int. upsampling factor.
        name: str. layer name.
    """
    return LinearUpsampling(size=(factor,) * check_ndim(ndim), name=name)(x)


def heatmap_head(x, ndim, num_landmarks, kernel_initializer, name=None):
    """Final convolution with kernel 1 to one heatmap per landmark, no activation, starting at
    the all-zero heatmap (zero kernel and bias; the module docstring says why).

    Args:
        x: tensor. input `(batch, *spatial, channels)`.
        ndim: int. number of spatial dimensions, 2 or 3.
        num_landmarks: int. number of output channels.
        kernel_initializer: str or dict. The network's initializer; not used by the head,
            which starts at zero (kept so that every block takes the same arguments).
        name: str. layer name.
    """
    del kernel_initializer
    return conv(x, ndim, num_landmarks, 1, "zeros", activation=None, name=name)


def unet(x, ndim, num_levels, convs_per_level, filters, kernel_size, kernel_initializer,
         combine="concat", negative_slope=0.0, dropout=0.0, name=None):
    """U-Net body: contracting path with average pooling, expanding path with linear upsampling.

    Args:
        x: tensor. input `(batch, *spatial, channels)`, spatial sizes divisible by
            `2 ** (num_levels - 1)`.
        ndim: int. number of spatial dimensions, 2 or 3.
        num_levels: int. resolution levels; there are `num_levels - 1` pooling steps.
        convs_per_level: int. convolutions per level on each path.
        filters: int. channels of every convolution.
        kernel_size: int or tuple of `ndim` ints. kernel extent per spatial axis.
        kernel_initializer: str or dict. Keras initializer identifier.
        combine: str. how an upsampled map meets its skip: `"concat"` (2016 paper) or `"add"`
            (2019 SCN).
        negative_slope: float. leaky ReLU slope, 0 for plain ReLU.
        dropout: float. dropout rate inside every level, 0 for none.
        name: str. prefix: layers are `f"{name}_pool{level}"`, `f"{name}_down{level}_*"`,
            `f"{name}_upsample{level}"`, `f"{name}_combine{level}"` and `f"{name}_up{level}_*"`.

    Returns:
        a tensor `(batch, *spatial, filters)` at the input resolution.
    """
    stack = dict(ndim=ndim, num_convs=convs_per_level, filters=filters, kernel_size=kernel_size,
                 kernel_initializer=kernel_initializer, negative_slope=negative_slope,
                 dropout=dropout)
    skips = []
    for level in range(num_levels):
        if level > 0:
            x = downsample(x, ndim, 2, name=f"{name}_pool{level}")
        x = conv_stack(x, name=f"{name}_down{level}", **stack)
        skips.append(x)
    for level in reversed(range(num_levels - 1)):
        x = upsample(x, ndim, 2, name=f"{name}_upsample{level}")
        if combine == "concat":
            x = keras.layers.Concatenate(name=f"{name}_combine{level}")([skips[level], x])
        else:
            x = keras.layers.Add(name=f"{name}_combine{level}")([skips[level], x])
        x = conv_stack(x, name=f"{name}_up{level}", **stack)
    return x


def spatial_configuration(local, ndim, num_landmarks, factor, num_convs, filters,
                           kernel_size, kernel_initializer, negative_slope, activation):
    """Spatial configuration block: pool the local heatmaps, large-kernel convs, upsample.

    The last convolution maps to `num_landmarks` channels, so with `num_convs=0` it is exactly
    Eqs. 1-2 of the paper: `H_acc_i = sum_j H_app_j * K_ij`. It starts with a zero kernel and
    bias 1: the constant factor 1 (`tanh(1)` with the tanh activation), so that the product
    with the local heatmaps starts as the local heatmaps (the module docstring says why).
    """
    x = downsample(local, ndim, factor, name="spatial_pool")
    x = conv_stack(x, ndim, num_convs, filters, kernel_size, kernel_initializer,
                          negative_slope=negative_slope, name="spatial")
    x = conv(x, ndim, num_landmarks, kernel_size, "zeros", activation=activation,
             name="spatial_heatmaps", bias_initializer="ones")
    return upsample(x, ndim, factor, name="spatial_upsample")
