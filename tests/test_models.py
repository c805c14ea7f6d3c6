"""Tests of keraslm.models: upsampling layer, the five networks in 2D and 3D, presets, errors."""
import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keraslm.models import (
    ARCHITECTURES,
    PAPER_INITIALIZER,
    PRESET_NAMES,
    LandmarkModel,
    LinearUpsampling,
    build_model,
    get_preset,
)
from keraslm.models.summary import PAPER_TABLE1, conv_flops
from keraslm.errors import KeraslmError

# Keras 3.15's TensorFlow backend calls np.array(variable, copy=False) when saving; NumPy 2 warns.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# ---------------------------------------------------------------------------------------------
# NumPy references for the fixed linear upsampling
# ---------------------------------------------------------------------------------------------


def _taps(n, factor):
    """Lower/upper source index and weight of every output index along one axis."""
    s = (np.arange(n * factor) + 0.5) / factor - 0.5
    lower = np.floor(s).astype(int)
    t = (s - lower).astype(np.float32)
    return np.clip(lower, 0, n - 1), np.clip(lower + 1, 0, n - 1), t


def upsample_separable_reference(x, sizes):
    """Half-pixel linear upsampling, one spatial axis after the other (float32 arithmetic)."""
    for axis, factor in enumerate(sizes, start=1):
        lower, upper, t = _taps(x.shape[axis], factor)
        shape = [1] * x.ndim
        shape[axis] = -1
        t = t.reshape(shape)
        x = (np.float32(1) - t) * np.take(x, lower, axis=axis) + t * np.take(x, upper, axis=axis)
    return x


def upsample_multilinear_reference(x, sizes):
    """Direct bi-/trilinear interpolation over the 2**ndim corners, in float64."""
    x = x.astype(np.float64)
    taps = [_taps(n, f) for n, f in zip(x.shape[1:-1], sizes)]
    out = np.zeros((x.shape[0], *(len(t[2]) for t in taps), x.shape[-1]))
    for corner in itertools.product((0, 1), repeat=len(sizes)):
        weight = np.ones(out.shape[1:-1])
        indices = []
        for axis, (bit, (lower, upper, t)) in enumerate(zip(corner, taps)):
            shape = [1] * len(sizes)
            shape[axis] = -1
            w = t if bit else 1 - t
            weight = weight * w.astype(np.float64).reshape(shape)
            indices.append((upper if bit else lower).reshape(shape))
        gathered = x[(slice(None), *np.broadcast_arrays(*indices))]
        out += weight[None, ..., None] * gathered
    return out


UPSAMPLING_CASES = [
    ((2, 5, 7, 3), 2),
    ((1, 3, 9, 2), (4, 8)),
    ((1, 1, 2, 1), 2),
    ((2, 3, 5, 7, 2), 2),
    ((1, 3, 1, 5, 1), (2, 4, 8)),
]


@pytest.mark.parametrize("shape, size", UPSAMPLING_CASES)
def test_upsampling_matches_numpy_reference_exactly(shape, size):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sizes = (size,) * (len(shape) - 2) if isinstance(size, int) else size
    y = keras.ops.convert_to_numpy(LinearUpsampling(size)(x))
    np.testing.assert_array_equal(y, upsample_separable_reference(x, sizes))
    np.testing.assert_allclose(y, upsample_multilinear_reference(x, sizes), atol=1e-5)


def test_upsampling_equals_tf_image_resize_bilinear():
    x = np.random.default_rng(1).normal(size=(2, 5, 7, 3)).astype(np.float32)
    for factor in (2, 8):
        expected = tf.image.resize(x, (5 * factor, 7 * factor), method="bilinear")
        np.testing.assert_allclose(LinearUpsampling(factor)(x), expected, atol=1e-6)


def test_upsampling_factor_two_weights_and_clamped_edges():
    x = np.array([0.0, 4.0, 8.0], np.float32).reshape(1, 3, 1, 1)
    y = keras.ops.convert_to_numpy(LinearUpsampling((2, 1))(x)).ravel()
    np.testing.assert_array_equal(y, [0.0, 1.0, 3.0, 5.0, 7.0, 8.0])


def test_upsampling_with_none_dims_in_graph_and_xla():
    layer = LinearUpsampling(2)
    spec = tf.TensorSpec([None, None, None, None, 2], tf.float32)
    graph = tf.function(layer, input_signature=[spec])
    xla = tf.function(layer, input_signature=[spec], jit_compile=True)
    x = np.random.default_rng(2).normal(size=(1, 3, 5, 7, 2)).astype(np.float32)
    expected = upsample_separable_reference(x, (2, 2, 2))
    np.testing.assert_array_equal(graph(x), expected)
    np.testing.assert_allclose(xla(x), expected, atol=1e-6)
    symbolic = layer(keras.Input((None, 4, None, 2)))
    assert symbolic.shape == (None, None, 8, None, 2)


def test_upsampling_config_round_trip_and_errors():
    layer = LinearUpsampling((2, 4), name="up")
    assert LinearUpsampling.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match=r"Received: size=0"):
        LinearUpsampling(0)
    with pytest.raises(ValueError, match=r"Received: size=\(2,\)"):
        LinearUpsampling((2,))
    with pytest.raises(ValueError, match=r"Received: size=\(2, 4\)"):
        LinearUpsampling((2, 4))(np.zeros((1, 2, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"Received: input rank=3"):
        LinearUpsampling(2)(np.zeros((1, 4, 1), np.float32))


# ---------------------------------------------------------------------------------------------
# Presets and the paper's Table 1
# ---------------------------------------------------------------------------------------------


def test_table1_weight_ratios_within_ten_percent():
    counts = {arch: build_model(arch, 2, 37).count_params() for arch in PAPER_TABLE1}
    for arch, paper_ratio in PAPER_TABLE1.items():
        ratio = counts[arch] / counts["scn"]
        assert abs(ratio / paper_ratio - 1) < 0.10, (arch, ratio, paper_ratio)
    assert 1.0e6 < counts["scn"] < 1.3e6  # about 1.14 M weights


@pytest.mark.parametrize(
    "architecture, ndim, stride, divisor",
    [("downsampling", 2, 4, 4), ("downsampling", 3, 2, 2), ("convonly", 2, 1, 1),
     ("convonly", 3, 1, 1), ("unet", 2, 1, 8), ("unet", 3, 1, 4), ("scn", 2, 1, 8),
     ("scn", 3, 1, 4), ("scn2019", 2, 1, 16), ("scn2019", 3, 1, 8)],
)
def test_paper_output_geometry(architecture, ndim, stride, divisor):
    model = build_model(architecture, ndim, 3, filters=2)
    assert (model.output_stride, model.size_divisor) == (stride, divisor)
    assert model.architecture == architecture and model.ndim == ndim
    assert model.output_spatial_shape((divisor * 3,) * ndim) == (divisor * 3 // stride,) * ndim


def test_paper_preset_layers_and_initialisation():
    model = build_model("scn", 3, 28, input_shape=(16, 16, 8, 1))
    assert model.get_layer("spatial_heatmaps").kernel.shape == (5, 9, 9, 28, 28)
    assert model.get_layer("local_conv0").kernel.shape == (3, 3, 3, 1, 64)
    assert model.get_layer("spatial_heatmaps").activation is keras.activations.linear
    assert model.get_layer("heatmaps").__class__ is keras.layers.Multiply
    paper2d = build_model("convonly", 2, 37)
    convs = [layer for layer in paper2d.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.kernel.shape[:2] for c in convs] == [(11, 11)] * 6 + [(1, 1)]
    assert convs[-1].activation is keras.activations.linear
    assert all(c.activation is keras.activations.relu for c in convs[:-1])
    hidden = convs[2].kernel.numpy()
    assert abs(hidden.std() - 0.01) < 0.001 and abs(hidden.mean()) < 0.001
    assert not np.any(convs[2].bias.numpy())
    # every layer draws its own values (an unseeded initializer shared between layers would not)
    assert not np.array_equal(convs[2].kernel.numpy(), convs[3].kernel.numpy())
    small = build_model("convonly", 2, 37, preset="small")
    assert isinstance(small.get_layer("convs_conv1").kernel_initializer,
                      keras.initializers.HeNormal)


@pytest.mark.parametrize("preset, architecture, ndim",
                         list(itertools.product(PRESET_NAMES, ARCHITECTURES, (2, 3))))
def test_every_preset_setting_can_be_overridden(preset, architecture, ndim):
    settings = get_preset(preset, architecture, ndim)
    model = build_model(architecture, ndim, 2, preset=preset, **settings)
    config = model.get_config()
    for key, value in settings.items():
        assert config[key] == (tuple(value) if isinstance(value, list) else value), key
    assert build_model(architecture, ndim, 2, preset=preset, filters=3).get_config()[
        "filters"] == 3


# ---------------------------------------------------------------------------------------------
# Every architecture x ndim: forward, backward, config, .keras, SavedModel
# ---------------------------------------------------------------------------------------------

# Small models on odd-but-valid sizes: each spatial size an odd multiple of the divisor.
TINY = {"filters": 4}
ODD_MULTIPLES = {2: ((3, 5), (5, 1)), 3: ((3, 1, 5), (1, 3, 3))}
CASES = list(itertools.product(ARCHITECTURES, (2, 3)))


def _tiny_model(architecture, ndim, **overrides):
    return build_model(architecture, ndim, 3, preset="small", **{**TINY, **overrides})


def _image(model, multiples, batch=2, seed=0):
    spatial = tuple(m * model.size_divisor for m in multiples)
    return np.random.default_rng(seed).normal(size=(batch, *spatial, 1)).astype(np.float32)


@pytest.mark.parametrize("architecture, ndim", CASES)
def test_forward_backward_and_layer_dimensions(architecture, ndim):
    model = _tiny_model(architecture, ndim)
    x = _image(model, ODD_MULTIPLES[ndim][0])
    with tf.GradientTape() as tape:
        y = model(x, training=True)
        loss = tf.reduce_mean(tf.square(y - 1.0))  # The networks start at y = 0.
    grads = tape.gradient(loss, model.trainable_variables)
    expected = tuple(d // model.output_stride for d in x.shape[1:-1])
    assert tuple(y.shape) == (2, *expected, 3)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    assert any(np.any(g.numpy() != 0) for g in grads)
    wrong = (keras.layers.Conv3D, keras.layers.AveragePooling3D) if ndim == 2 else (
        keras.layers.Conv2D, keras.layers.AveragePooling2D)
    assert not any(isinstance(layer, wrong) for layer in model.layers)
    assert all(len(w.shape) in (1, ndim + 2) for w in model.weights)


@pytest.mark.parametrize("architecture, ndim", CASES)
def test_config_keras_file_and_saved_model_round_trip(architecture, ndim, tmp_path):
    initializer = PAPER_INITIALIZER if architecture == "unet" else "he_normal"
    model = _tiny_model(architecture, ndim, kernel_initializer=initializer)
    x = _image(model, ODD_MULTIPLES[ndim][0])
    x_other = _image(model, ODD_MULTIPLES[ndim][1], batch=1, seed=1)
    expected = keras.ops.convert_to_numpy(model(x))

    config = model.get_config()
    json.dumps(config)
    clone = model.__class__.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)), expected)

    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, LandmarkModel)
    assert (reloaded.output_stride, reloaded.size_divisor) == (model.output_stride,
                                                               model.size_divisor)
    assert reloaded.get_config() == config
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(x)), expected)

    model.export(str(tmp_path / "saved_model"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(served.serve(x), expected, atol=1e-5)
    np.testing.assert_allclose(served.serve(x_other), model(x_other), atol=1e-5)


def test_scn_output_is_local_times_upsampled_spatial():
    model = _tiny_model("scn", 2)
    probe = keras.Model(model.input, [model.get_layer("local_heatmaps").output,
                                      model.get_layer("spatial_heatmaps").output, model.output])
    x = _image(model, (3, 5))
    local, spatial_low, heatmaps = (keras.ops.convert_to_numpy(t) for t in probe(x))
    assert spatial_low.shape == (2, 3, 5, 3)  # 1/8 resolution
    spatial = upsample_separable_reference(spatial_low, (8, 8))
    np.testing.assert_allclose(heatmaps, local * spatial, rtol=1e-5, atol=1e-6)


def test_numpy_integers_are_accepted_and_stored_as_int():
    model = build_model("unet", 2, np.int64(3), preset="small", filters=np.int32(4),
                        input_shape=(np.int64(16), None, 1))
    config = model.get_config()
    assert (config["num_landmarks"], config["filters"]) == (3, 4)
    assert config["input_shape"] == [16, None, 1]
    json.dumps(config)


def test_conv_flops_by_hand():
    model = build_model("convonly", 2, 1, preset="small", filters=2, kernel_size=3,
                        num_convs=1, input_shape=(8, 8, 1))
    assert conv_flops(model) == 2 * 9 * 1 * 2 * 64 + 2 * 1 * 2 * 1 * 64
    with pytest.raises(ValueError, match="static input shape"):
        conv_flops(_tiny_model("convonly", 2))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("unet", 4, 3), {}, r"`ndim` must be 2 or 3\. Received: ndim=4"),
        (("unet", 1, 3), {}, r"Received: ndim=1"),
        (("resnet", 2, 3), {}, r"Unknown `architecture`.*Received: architecture='resnet'"),
        (("unet", 2, 3), {"preset": "huge"}, r"Unknown `preset`.*Received: preset='huge'"),
        (("unet", 2, 0), {}, r"`num_landmarks` must be an int >= 1\. Received: num_landmarks=0"),
        (("scn", 2, 3), {"filterz": 8}, r"Unknown setting 'filterz'.*Received: filterz=8"),
        (("unet", 2, 3), {"input_shape": (60, 40, 1)},
         r"divisible by 8\. Received: input_shape=\(60, 40, 1\)"),
        (("downsampling", 3, 3), {"input_shape": (4, 5, 6, 1)},
         r"divisible by 2\. Received: input_shape=\(4, 5, 6, 1\)"),
        (("unet", 3, 3), {"input_shape": (32, 32, 1)}, r"Received: input_shape=\(32, 32, 1\)"),
        (("scn", 3, 3), {"spatial_kernel_size": (9, 9)},
         r"3 positive ints for ndim=3\. Received: spatial_kernel_size=\(9, 9\)"),
        (("unet", 2, 3), {"num_levels": 0}, r"Received: num_levels=0"),
        (("scn2019", 2, 3), {"dropout": 1.5}, r"Received: dropout=1\.5"),
        (("unet", 2, 3), {"kernel_initializer": "nope"}, r"Received: kernel_initializer='nope'"),
    ],
)
def test_bad_arguments_raise_clear_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(*args, **kwargs)


def test_bad_inputs_at_call_time():
    model3d = _tiny_model("unet", 3)
    with pytest.raises(ValueError, match=r"is 3D and expects inputs of rank 5.*"
                                         r"Received: inputs.shape=\(1, 16, 16, 1\)"):
        model3d(np.zeros((1, 16, 16, 1), np.float32))
    with pytest.raises(ValueError, match=r"divisible by 4\. Received: inputs.shape\[1:-1\]="
                                         r"\(8, 6, 8\)"):
        model3d(np.zeros((1, 8, 6, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\)"):
        model3d(np.zeros((1, 8, 8, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"divisible by 8\. Received: spatial_shape=\(12, 16\)"):
        _tiny_model("scn", 2).output_spatial_shape((12, 16))


# -- the architecture registry ----------------------------------------------------------------

@pytest.fixture
def tiny_architecture():
    """A fifth architecture registered for one test: one convolution, then the heatmap head."""
    from keraslm.models import Architecture, LandmarkModel, register_architecture
    from keraslm.models import blocks
    from keraslm.models.base import common_args
    from keraslm.models.registry import ARCHITECTURES

    @keras.saving.register_keras_serializable(package="keraslm_test")
    class TinyNet(LandmarkModel):
        architecture = "tiny"

        def __init__(self, ndim, num_landmarks, *, filters, kernel_initializer,
                     input_shape=None, name=None, **kwargs):
            shape, inputs = common_args(self.architecture, ndim, num_landmarks, input_shape,
                                        kernel_initializer, 1)
            x = blocks.conv(inputs, ndim, filters, 3, kernel_initializer, name="conv")
            outputs = blocks.heatmap_head(x, ndim, num_landmarks, kernel_initializer, "heatmaps")
            super().__init__(inputs, outputs, ndim, num_landmarks, shape, kernel_initializer,
                             output_stride=1, size_divisor=1, name=name or "tiny", **kwargs)
            self.filters = filters

        def get_config(self):
            return {**super().get_config(), "filters": self.filters}

    settings = {2: dict(filters=4, kernel_initializer="he_normal"),
                3: dict(filters=2, kernel_initializer="he_normal")}
    entry = register_architecture(Architecture(
        "tiny", TinyNet, {"paper": settings, "small": settings}, paper_caffe_learning_rate=1e-5,
        description="one convolution (a test)"))
    yield entry
    del ARCHITECTURES["tiny"]


def test_a_registered_architecture_builds_and_is_a_command_line_choice(tiny_architecture):
    """Adding an architecture is one class plus its registration: build_model, the presets,
    the paper's learning rate and `--architecture` follow from it."""
    from keraslm.commands.train import parse_args
    from keraslm.models import register_architecture
    from keraslm.training.presets import get_training_preset

    model = build_model("tiny", 2, 5, preset="small", input_shape=(16, 16, 1))
    assert model.output_shape == (None, 16, 16, 5) and model.filters == 4
    assert build_model("tiny", 3, 2, preset="paper", filters=1).filters == 1
    assert parse_args(["--architecture", "tiny"]).architecture == "tiny"
    paper = get_training_preset("paper", 2, "tiny", heatmap_pixels=100, num_landmarks=2)
    assert paper["learning_rate"] == pytest.approx(1e-5 * 100 * 2 / 2)
    with pytest.raises(KeraslmError, match="registered already"):
        register_architecture(tiny_architecture)


def test_unknown_architecture_names_the_registered_ones():
    with pytest.raises(KeraslmError, match=r"Expected one of \['convonly', 'downsampling', 'scn', 'scn2019', 'unet'\]"):
        build_model("resnet", 2, 5)
