"""Tests of keraslm.ops.heatmaps.HeatmapCodec: rendering, weights, decoding, errors.

Points are (x, y[, z]) in input grid index units; heatmaps (batch, *output_shape, L) with
spatial axes (y, x) / (z, y, x); output coordinate = (input - (s - 1) / 2) / s.
"""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from keraslm.ops import HeatmapCodec

SHAPES = {2: (44, 36), 3: (20, 28, 24)}  # non-square, divisible by 4


# ---------------------------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------------------------


def render_reference(points, input_shape, stride, sigma, truncate=4.0):
    """Direct (non-separable) rendering, float64, one landmark at a time."""
    out_shape = tuple(n // stride for n in input_shape)
    ndim = len(out_shape)
    batch, num = points.shape[:2]
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (num,))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij")[::-1], -1)
    out = np.zeros((batch, *out_shape, num))
    for b, l in itertools.product(range(batch), range(num)):
        centre = (points[b, l] - (stride - 1) / 2) / stride
        if not np.all(np.isfinite(centre)):
            continue
        d = grid - centre
        g = np.exp(-(d ** 2).sum(-1) / (2 * sigma[l] ** 2))
        g[np.any(np.abs(d) > truncate * sigma[l], axis=-1)] = 0
        out[(b, Ellipsis, l)] = g
    assert ndim in (2, 3)
    return out


def quadratic_reference(heatmap):
    """Argmax and the authors' per-axis parabola on one (*spatial) array; (x, y[, z])."""
    idx = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    pos = []
    for a, i in enumerate(idx):
        delta = 0.0
        if 0 < i < heatmap.shape[a] - 1:
            lo, hi = list(idx), list(idx)
            lo[a], hi[a] = i - 1, i + 1
            m, c, p = heatmap[tuple(lo)], heatmap[idx], heatmap[tuple(hi)]
            if m - 2 * c + p < 0:
                delta = float(np.clip(0.5 * (m - p) / (m - 2 * c + p), -0.5, 0.5))
        pos.append(i + delta)
    return np.array(pos[::-1])


def dark_reference(heatmap, sigma):
    """DARK with a full-image separable Gaussian blur (zero padding), log, Newton step."""
    radius = int(np.ceil(3 * sigma))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    smooth = heatmap.astype(np.float64)
    for a in range(heatmap.ndim):
        smooth = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), a, smooth)
    f = np.log(np.maximum(smooth, 1e-10))
    idx = np.array(np.unravel_index(np.argmax(heatmap), heatmap.shape))
    nd = heatmap.ndim

    def at(step):
        return f[tuple(idx + np.asarray(step))]

    eye = np.eye(nd, dtype=int)
    grad = np.array([(at(eye[a]) - at(-eye[a])) / 2 for a in range(nd)])
    hess = np.zeros((nd, nd))
    for a in range(nd):
        for b in range(nd):
            if a == b:
                hess[a, a] = at(eye[a]) - 2 * at(0 * eye[a]) + at(-eye[a])
            else:
                hess[a, b] = (at(eye[a] + eye[b]) - at(eye[a] - eye[b]) - at(-eye[a] + eye[b])
                              + at(-eye[a] - eye[b])) / 4
    offset = np.clip(-np.linalg.solve(hess, grad), -1, 1)
    return (idx + offset)[::-1]


def random_points(rng, codec, batch, num, margin):
    """Points whose output coordinates lie at least `margin` output pixels inside the field."""
    size = np.array(codec.output_shape[::-1], np.float64)
    out = margin + rng.uniform(0, 1, (batch, num, codec.ndim)) * (size - 1 - 2 * margin)
    return codec.to_input(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Rendering and weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_encode_matches_numpy_reference(ndim, stride):
    rng = np.random.default_rng(ndim * 10 + stride)
    codec = HeatmapCodec(SHAPES[ndim], stride=stride, sigma=1.5)
    points = random_points(rng, codec, 2, 4, margin=-1.0)  # some centres just outside
    points[0, 1] = np.nan
    points[1, 3, 0] = np.nan
    got = codec.encode(points).numpy()
    assert got.shape == (2, *codec.output_shape, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, render_reference(points, SHAPES[ndim], stride, 1.5),
                               atol=1e-6)
    assert got[0, ..., 1].max() == 0 and got[1, ..., 3].max() == 0  # NaN: empty heatmap


def test_encode_per_landmark_sigma_and_override():
    codec = HeatmapCodec(SHAPES[2], stride=2, sigma=[1.0, 2.0, 3.0])
    points = random_points(np.random.default_rng(0), codec, 2, 3, margin=2.0)
    np.testing.assert_allclose(codec.encode(points).numpy(),
                               render_reference(points, SHAPES[2], 2, [1.0, 2.0, 3.0]),
                               atol=1e-6)
    override = tf.constant([2.5, 1.5, 2.0])
    np.testing.assert_allclose(codec.encode(points, sigma=override).numpy(),
                               render_reference(points, SHAPES[2], 2, [2.5, 1.5, 2.0]),
                               atol=1e-6)


def test_learnable_sigma_gets_finite_gradients():
    codec = HeatmapCodec(SHAPES[2], sigma=2.0)
    points = random_points(np.random.default_rng(1), codec, 2, 3, margin=3.0)
    points[0, 0] = np.nan
    sigma = tf.Variable([2.0, 2.5, 3.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(codec.encode(points, sigma=sigma) ** 2)
    grad = tape.gradient(loss, sigma).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad > 0)


@pytest.mark.parametrize("stride", [1, 4])
def test_weights_zero_for_missing_and_out_of_field(stride):
    codec = HeatmapCodec((16, 24), stride=stride, sigma=1.0)
    lo, hi_x, hi_y = -0.5, 24 - 0.5, 16 - 0.5  # the field in input units, for every stride
    points = np.array([[[3.0, 4.0], [np.nan, 4.0], [lo, lo], [lo - 0.01, 3.0],
                        [hi_x - 0.01, hi_y - 0.01], [hi_x, 3.0], [3.0, hi_y], [-40.0, 90.0]]],
                      np.float32)
    np.testing.assert_array_equal(codec.weights(points).numpy(),
                                  [[1, 0, 1, 0, 1, 0, 0, 0]])


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_decode_encode_recovers_subpixel_points(ndim, stride):
    shape = SHAPES[ndim] if stride < 4 or ndim == 2 else (32, 40, 36)
    codec = HeatmapCodec(shape, stride=stride, sigma=1.5)
    rng = np.random.default_rng(ndim + 7 * stride)
    points = random_points(rng, codec, 3, 5, margin=1.0)  # includes peaks near the border
    heatmaps = codec.encode(points)
    decode = tf.function(lambda h, m: codec.decode(h, m), jit_compile=True)
    errors = {}
    for method in ("argmax", "quadratic", "dark"):
        decoded, confidence = decode(heatmaps, method)
        errors[method] = np.abs(codec.to_output(decoded.numpy()) - codec.to_output(points))
        assert decoded.shape == points.shape
        assert np.all(confidence.numpy() > 0.7) and np.all(confidence.numpy() <= 1.0)
    # In output pixels: argmax <= 0.5; the parabola is biased on a Gaussian; DARK is exact.
    assert errors["argmax"].max() <= 0.5 + 1e-5
    assert errors["quadratic"].max() < 0.05
    interior = random_points(rng, codec, 3, 5, margin=6.0)  # DARK's window fits inside
    if np.all(np.array(codec.output_shape) > 14):
        dark, _ = decode(codec.encode(interior), "dark")
        dark_error = np.abs(codec.to_output(dark.numpy()) - codec.to_output(interior))
        assert dark_error.max() < 0.005
    assert errors["dark"].max() < 0.05


@pytest.mark.parametrize("ndim", [2, 3])
def test_decode_matches_numpy_references_on_noisy_heatmaps(ndim):
    codec = HeatmapCodec(SHAPES[ndim] if ndim == 2 else (28, 30, 26), sigma=2.0)
    rng = np.random.default_rng(3 + ndim)
    points = random_points(rng, codec, 2, 3, margin=8.0)
    heatmaps = codec.encode(points).numpy()
    heatmaps = heatmaps + 0.05 * rng.uniform(0, 1, heatmaps.shape).astype(np.float32)
    quad, conf = codec.decode(heatmaps, "quadratic")
    dark, _ = codec.decode(heatmaps, "dark")
    for b, l in itertools.product(range(2), range(3)):
        h = heatmaps[(b, Ellipsis, l)]
        np.testing.assert_allclose(quad.numpy()[b, l], quadratic_reference(h), atol=1e-4)
        np.testing.assert_allclose(dark.numpy()[b, l], dark_reference(h, 2.0), atol=1e-3)
        assert conf.numpy()[b, l] == h.max()


def test_decode_border_flat_and_stride_conventions():
    codec = HeatmapCodec((8, 12), stride=4, sigma=1.0)  # output grid (2, 3)
    heatmaps = np.zeros((1, 2, 3, 3), np.float32)
    heatmaps[0, 1, 2, 0] = 1.0  # corner peak: no neighbours on two sides
    heatmaps[0, 0, 1, 1] = 0.5  # a tie: argmax takes the first pixel in row-major order,
    heatmaps[0, 0, 0, 1] = 0.5  # here the corner (0, 0), where no parabola is fitted
    # channel 2 all zero: argmax at 0, confidence 0
    for method in ("quadratic", "dark", "argmax"):
        points, confidence = codec.decode(heatmaps, method)
        points = points.numpy()
        np.testing.assert_allclose(points[0, 0], [4 * 2 + 1.5, 4 * 1 + 1.5])
        np.testing.assert_allclose(points[0, 1], [1.5, 1.5])
        np.testing.assert_allclose(points[0, 2], [1.5, 1.5])
        np.testing.assert_allclose(confidence.numpy()[0], [1.0, 0.5, 0.0])
        assert np.all(np.isfinite(points))


def test_centre_prior_weights_choose_the_peak_and_leave_refinement_alone():
    codec = HeatmapCodec((20, 32), stride=2, sigma=1.5)  # output grid (10, 16)
    prior = codec.centre_prior(spacing=(0.5, 1.0), sigma_mm=3.0)  # (x, y): 0.5 mm, 1 mm
    assert prior.shape == (1, 10, 16, 1) and prior.dtype == np.float32
    # Output cell (row 2, col 12) = input (y 4.5, x 24.5); the input centre is (9.5, 15.5).
    expected = np.exp(-(((4.5 - 9.5) * 1.0) ** 2 + ((24.5 - 15.5) * 0.5) ** 2) / (2 * 9.0))
    np.testing.assert_allclose(prior[0, 2, 12, 0], expected, rtol=1e-6)
    # The nearest cells are 1 input pixel off the centre on both axes: 1 mm and 0.5 mm.
    np.testing.assert_allclose(prior.max(), np.exp(-(1.0 ** 2 + 0.5 ** 2) / 18.0), rtol=1e-6)
    # A strong far peak and a weaker one near the centre.
    near = codec.encode(np.array([[[14.2, 10.7]]], np.float32)).numpy()
    far = codec.encode(np.array([[[29.0, 2.5]]], np.float32)).numpy()
    heatmaps = 0.6 * near + far
    unweighted, _ = codec.decode(heatmaps)
    np.testing.assert_allclose(unweighted.numpy()[0, 0], [29.0, 2.5], atol=0.3)
    for method in ("quadratic", "dark"):
        points, confidence = codec.decode(heatmaps, method, peak_weights=prior)
        alone, alone_confidence = codec.decode(0.6 * near, method)
        # The sub-pixel step uses the raw heatmap: the same as with the near peak alone
        # (the far one is 8 output pixels away, beyond the refinement windows).
        np.testing.assert_allclose(points.numpy(), alone.numpy(), atol=1e-4)
        np.testing.assert_allclose(confidence.numpy(), alone_confidence.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match=r"Received: sigma_mm=0"):
        codec.centre_prior(1.0, 0)
    with pytest.raises(ValueError, match=r"broadcast to the heatmaps' grid \(batch, 12, 16, "
                                         r"num_landmarks\). Received: peak_weights.shape=\(1, 10, 16, 1\)"):
        codec.decode(np.zeros((1, 12, 16, 2), np.float32), peak_weights=prior)


def test_codec_shapes_and_config_round_trip():
    codec = HeatmapCodec((64, 48, 32), stride=4, sigma=[1.5, 2.0], truncate=3.0)
    assert codec.output_shape == (16, 12, 8) and codec.ndim == 3
    again = HeatmapCodec.from_config(codec.get_config())
    assert again.get_config() == codec.get_config()
    np.testing.assert_allclose(codec.to_input(codec.to_output(np.array([3.0, 7.5]))), [3.0, 7.5])
    np.testing.assert_allclose(codec.to_output(np.array([1.5])), [0.0])  # pixel 0 = inputs 0..3


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_codec_arguments():
    with pytest.raises(ValueError) as info:
        HeatmapCodec((32, 32), sigma=-1.0)
    assert str(info.value) == (
        "`sigma` must be a positive number or a 1D sequence of positive numbers (one per "
        "landmark), in output pixels. Received: sigma=-1.0")
    with pytest.raises(ValueError, match=r"Received: input_shape=\(30, 32\), stride=4"):
        HeatmapCodec((30, 32), stride=4)
    with pytest.raises(ValueError, match="Received: stride=0"):
        HeatmapCodec((32, 32), stride=0)
    with pytest.raises(ValueError, match=r"Received: input_shape=\(32,\)"):
        HeatmapCodec((32,))
    with pytest.raises(ValueError, match="Received: sigma=\\[1.0, 0.0\\]"):
        HeatmapCodec((32, 32), sigma=[1.0, 0.0])


def test_bad_encode_decode_input():
    codec = HeatmapCodec((32, 24), stride=2, sigma=2.0)
    with pytest.raises(ValueError) as info:
        codec.encode(np.zeros((2, 5, 3), np.float32))
    assert str(info.value) == ("`points` must have shape (batch, num_landmarks, 2) with "
                               "coordinates (x, y) matching the 2D grid. Received: "
                               "points.shape=(2, 5, 3)")
    with pytest.raises(ValueError, match=r"Received: points.shape=\(5, 2\)"):
        codec.weights(np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="Received: sigma=-2"):
        codec.encode(np.zeros((2, 5, 2), np.float32), sigma=-2)
    with pytest.raises(ValueError, match=r"Received: sigma.shape=\(4,\)"):
        codec.encode(np.zeros((2, 5, 2), np.float32), sigma=tf.ones(4))
    with pytest.raises(ValueError, match=r"\(batch, n, n, num_landmarks\) with a known "
                                         r"num_landmarks. Received: heatmaps.shape=\(2, 32, 5\)"):
        codec.decode(np.zeros((2, 32, 5), np.float32))
    with pytest.raises(ValueError) as info:
        codec.decode(np.zeros((2, 16, 12, 5), np.float32), method="softargmax")
    assert str(info.value) == ("`method` must be one of ('quadratic', 'dark', 'argmax'). "
                               "Received: method='softargmax'")


def test_amplitude_scales_the_targets_and_nothing_else():
    points = np.array([[[10.3, 7.8], [np.nan, np.nan]]], np.float32)
    unit = HeatmapCodec((24, 20), stride=2, sigma=1.5)
    scaled = HeatmapCodec((24, 20), stride=2, sigma=1.5, amplitude=100.0)
    np.testing.assert_allclose(scaled.encode(points).numpy(), 100.0 * unit.encode(points).numpy(),
                               rtol=1e-6)
    assert float(np.max(scaled.encode(points))) == pytest.approx(100.0 * float(np.max(unit.encode(points))))
    for method in ("quadratic", "dark"):
        np.testing.assert_allclose(scaled.decode(scaled.encode(points), method)[0].numpy()[0, 0],
                                   unit.decode(unit.encode(points), method)[0].numpy()[0, 0], atol=1e-4)
    assert HeatmapCodec.from_config(scaled.get_config()).amplitude == 100.0
    with pytest.raises(ValueError, match="Received: amplitude=0"):
        HeatmapCodec((24, 20), amplitude=0)
