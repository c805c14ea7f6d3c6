"""Tests of keraslm.ops.augmentation / geometry: sampling, resampling, moving landmarks.

Conventions: images (batch, *spatial, channels) with spatial (y, x) / (z, y, x); points
(batch, L, ndim) as (x, y[, z]) in grid index units (pixel centres at integers).
"""
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keraslm.ops import (
    AugmentationConfig,
    HeatmapCodec,
    apply_to_images,
    apply_to_points,
    device_stage,
    displacement_field,
    gaussian_blur,
    resample,
    sample_transforms,
)
from keraslm.ops.geometry import bspline_at, bspline_dense

# Odd, non-square grids with anisotropic spacing (array order shapes, (x, y[, z]) spacing).
GRIDS = {
    2: ((53, 67), (0.9, 1.3)),
    3: ((23, 31, 27), (1.1, 0.8, 1.6)),
}
FULL = AugmentationConfig(rotation_degrees=30.0, translation_mm=4.0, scale=0.1, axis_scale=0.1,
                          elastic_mm=3.0, elastic_grid_points=5, intensity_scale=0.1,
                          intensity_shift=0.1)


# ---------------------------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------------------------


def pixel_grid(spatial):
    """Pixel centres as (x, y[, z]) points, shape (*spatial, ndim)."""
    axes = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in spatial], indexing="ij")
    return np.stack(axes[::-1], axis=-1)


def resample_reference(images, matrix, displacement=None, fill=0.0, scale=None, shift=None):
    """Linear interpolation at matrix @ p + u(p), constant `fill` outside, float64."""
    images = np.asarray(images, np.float64)
    batch, spatial = images.shape[0], images.shape[1:-1]
    ndim = len(spatial)
    sizes = spatial[::-1]
    grid = pixel_grid(spatial)
    out = np.zeros(images.shape)
    for b in range(batch):
        content = images[b] * (1.0 if scale is None else scale[b]) + (
            0.0 if shift is None else shift[b])
        coords = grid @ np.asarray(matrix[b, :ndim, :ndim], np.float64).T + matrix[b, :ndim, ndim]
        if displacement is not None:
            coords = coords + displacement[b]
        lower = np.floor(coords).astype(int)
        frac = coords - lower
        for corner in itertools.product((0, 1), repeat=ndim):
            weight = np.ones(spatial)
            inside = np.ones(spatial, bool)
            index = []
            for k, bit in enumerate(corner):
                i = lower[..., k] + bit
                weight = weight * (frac[..., k] if bit else 1 - frac[..., k])
                inside &= (i >= 0) & (i < sizes[k])
                index.append(np.clip(i, 0, sizes[k] - 1))
            values = content[tuple(index[::-1])]  # (x, y, z) -> array order
            values = np.where(inside[..., None], values, fill)
            out[b] += weight[..., None] * values
    return out


def beta3(t):
    a = np.abs(t)
    return np.where(a < 1, 2 / 3 - a ** 2 + a ** 3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def bspline_reference(control, points, spatial):
    """Direct sum over all control points: u(p) = sum_idx prod_k beta3(p_k/h_k + 1 - idx_k) c."""
    control = np.asarray(control, np.float64)
    counts = control.shape[:-1]  # array order
    ndim = len(counts)
    sizes, g_xyz = spatial[::-1], counts[::-1]
    out = np.zeros(points.shape)
    for idx in itertools.product(*[range(g) for g in counts]):
        idx_xyz = idx[::-1]
        w = np.ones(points.shape[:-1])
        for k in range(ndim):
            h = (sizes[k] - 1) / (g_xyz[k] - 3)
            w = w * beta3(points[..., k] / h + 1 - idx_xyz[k])
        out += w[..., None] * control[idx]
    return out


def forward_map(transforms, points_out):
    """The sampling map output index -> input index (NumPy, with the elastic part)."""
    matrix = transforms["matrix"].numpy().astype(np.float64)
    ndim = matrix.shape[-1] - 1
    mapped = np.einsum("bij,blj->bli", matrix[:, :ndim, :ndim], points_out) + matrix[
        :, None, :ndim, ndim]
    if "elastic" in transforms:
        size = transforms["grid_size"].numpy()[0]
        spatial = tuple(int(s) for s in size[::-1])
        for b in range(len(points_out)):
            mapped[b] += bspline_reference(transforms["elastic"].numpy()[b], points_out[b],
                                           spatial)
    return mapped


def subpixel_peak(volume):
    """Argmax of a single-channel array plus a per-axis parabola; returned as (x, y[, z])."""
    idx = np.unravel_index(np.argmax(volume), volume.shape)
    pos = []
    for a, i in enumerate(idx):
        if 0 < i < volume.shape[a] - 1:
            lo, hi = list(idx), list(idx)
            lo[a], hi[a] = i - 1, i + 1
            m, c, p = volume[tuple(lo)], volume[idx], volume[tuple(hi)]
            pos.append(i + 0.5 * (m - p) / (m - 2 * c + p))
        else:
            pos.append(float(i))
    return np.array(pos[::-1])


def random_affine(rng, batch, spatial, strength=0.2):
    """Random output->input matrices close to the identity, about the grid centre."""
    ndim = len(spatial)
    centre = (np.array(spatial[::-1]) - 1) / 2
    out = np.tile(np.eye(ndim + 1), (batch, 1, 1))
    for b in range(batch):
        linear = np.eye(ndim) + strength * rng.uniform(-1, 1, (ndim, ndim))
        shift = rng.uniform(-3, 3, ndim)
        out[b, :ndim, :ndim] = linear
        out[b, :ndim, ndim] = centre - linear @ centre + shift
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Geometry: a bright dot follows its landmark
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_bright_dot_maximum_is_at_moved_landmark(ndim):
    spatial, spacing = GRIDS[ndim]
    batch = 4 if ndim == 2 else 3
    rng = np.random.default_rng(ndim)
    sizes = np.array(spatial[::-1], np.float64)
    points = rng.uniform(0.3, 0.7, (batch, 1, ndim)) * (sizes - 1)
    grid = pixel_grid(spatial)
    d2 = ((grid[None] - points[:, 0, None, None] if ndim == 2 else
           grid[None] - points[:, 0, None, None, None]) ** 2).sum(-1)
    images = np.exp(-d2 / (2 * 2.0 ** 2))[..., None].astype(np.float32)
    transforms = sample_transforms(7, batch, spatial, spacing, FULL)

    @tf.function(jit_compile=True)
    def augment(x, p):
        moved, valid, residual = apply_to_points(p, transforms, return_residual=True)
        return apply_to_images(x, transforms, intensity=False), moved, valid, residual

    out, moved, valid, residual = (t.numpy() for t in augment(images, points.astype(np.float32)))
    assert np.all(valid == 1)
    assert residual.max() < 1e-3
    for b in range(batch):
        peak = subpixel_peak(out[b, ..., 0])
        assert np.linalg.norm(peak - moved[b, 0]) < 0.5, (b, peak, moved[b, 0])
    # The deformation is not trivial: the dots moved and the field is not affine-only.
    assert np.abs(moved - points).max() > 2.0
    assert np.abs(displacement_field(transforms, spatial).numpy()).max() > 0.5


# ---------------------------------------------------------------------------------------------
# Resampling against the NumPy reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_resample_matches_numpy_reference(ndim):
    spatial, _ = GRIDS[ndim]
    rng = np.random.default_rng(10 + ndim)
    images = rng.normal(size=(2, *spatial, 2)).astype(np.float32)
    matrix = random_affine(rng, 2, spatial)
    scale, shift = np.array([0.9, 1.1], np.float32), np.array([0.1, -0.05], np.float32)
    got = resample(images, matrix, fill_value=-1.5, intensity_scale=scale,
                   intensity_shift=shift).numpy()
    want = resample_reference(images, matrix, fill=-1.5, scale=scale, shift=shift)
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert np.any(got == np.float32(-1.5))  # the fill is exact where all corners are outside


@pytest.mark.parametrize("ndim", [2, 3])
def test_elastic_resampling_matches_numpy_reference(ndim):
    spatial, spacing = GRIDS[ndim]
    images = np.random.default_rng(ndim).normal(size=(2, *spatial, 1)).astype(np.float32)
    transforms = sample_transforms(3, 2, spatial, spacing, FULL)
    field = displacement_field(transforms, spatial).numpy()
    grid = pixel_grid(spatial)
    for b in range(2):
        want = bspline_reference(transforms["elastic"].numpy()[b], grid, spatial)
        np.testing.assert_allclose(field[b], want, atol=1e-4)
    got = apply_to_images(images, transforms, fill_value=0.5).numpy()
    want = resample_reference(images, transforms["matrix"].numpy(), field, fill=0.5,
                              scale=transforms["intensity_scale"].numpy(),
                              shift=transforms["intensity_shift"].numpy())
    np.testing.assert_allclose(got, want, atol=3e-4)


def test_bspline_at_points_equals_dense_field_at_pixel_centres():
    spatial, spacing = GRIDS[3]
    transforms = sample_transforms(5, 2, spatial, spacing, FULL)
    dense = bspline_dense(transforms["elastic"], spatial).numpy()
    centres = pixel_grid(spatial).reshape(1, -1, 3).repeat(2, 0).astype(np.float32)
    at = bspline_at(transforms["elastic"], centres, transforms["grid_size"]).numpy()
    np.testing.assert_allclose(at, dense.reshape(2, -1, 3), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Identity, inverse, physical units, randomness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_config_is_identity(ndim):
    spatial, spacing = GRIDS[ndim]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, *spatial, 1)).astype(np.float32)
    points = (rng.uniform(0, 1, (3, 4, ndim)) * (np.array(spatial[::-1]) - 1)).astype(np.float32)
    points[1, 2] = np.nan
    transforms = sample_transforms(1, 3, spatial, spacing, AugmentationConfig.identity())
    eye = np.broadcast_to(np.eye(ndim + 1), (3, ndim + 1, ndim + 1))
    np.testing.assert_allclose(transforms["matrix"].numpy(), eye, atol=1e-6)
    np.testing.assert_allclose(transforms["inverse_matrix"].numpy(), eye, atol=1e-6)
    assert "elastic" not in transforms
    np.testing.assert_allclose(apply_to_images(images, transforms).numpy(), images, atol=1e-5)
    moved, valid = apply_to_points(points, transforms)
    np.testing.assert_allclose(moved.numpy(), points, atol=1e-4)
    np.testing.assert_array_equal(valid.numpy(), np.isfinite(points).all(-1).astype(np.float32))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("elastic", [False, True])
def test_inverse_composed_with_forward_map_returns_the_points(ndim, elastic):
    spatial, spacing = GRIDS[ndim]
    config = FULL if elastic else AugmentationConfig(rotation_degrees=30, translation_mm=10,
                                                     scale=0.2, axis_scale=0.1)
    transforms = sample_transforms(11, 3, spatial, spacing, config)
    product = np.einsum("bij,bjk->bik", transforms["matrix"].numpy(),
                        transforms["inverse_matrix"].numpy())
    np.testing.assert_allclose(product, np.broadcast_to(np.eye(ndim + 1), product.shape),
                               atol=1e-5)
    rng = np.random.default_rng(1)
    points = (rng.uniform(0.2, 0.8, (3, 6, ndim)) * np.array(spatial[::-1])).astype(np.float32)
    points[0, 0] = np.nan
    moved, valid, residual = apply_to_points(points, transforms, return_residual=True)
    back = forward_map(transforms, moved.numpy())
    np.testing.assert_allclose(back, points, atol=2e-3)  # NaN compare equal in assert_allclose
    assert np.isnan(moved.numpy()[0, 0]).all() and valid.numpy()[0, 0] == 0
    assert np.nanmax(residual.numpy()) < 1e-3


def test_rotation_keeps_physical_distances_with_anisotropic_spacing():
    spatial, spacing = GRIDS[3]
    config = AugmentationConfig(rotation_degrees=30, translation_mm=0, scale=0,
                                intensity_scale=0, intensity_shift=0)
    transforms = sample_transforms(2, 2, spatial, spacing, config)
    points = np.random.default_rng(0).uniform(5, 15, (2, 5, 3)).astype(np.float32)
    moved, _ = apply_to_points(points, transforms)

    def pairwise_mm(p):
        mm = p * np.asarray(spacing)
        return np.linalg.norm(mm[:, :, None] - mm[:, None], axis=-1)

    np.testing.assert_allclose(pairwise_mm(moved.numpy()), pairwise_mm(points), atol=1e-3)
    assert np.abs(moved.numpy() - points).max() > 0.5


def test_translation_is_in_mm():
    spatial, spacing = GRIDS[2]
    config = AugmentationConfig(rotation_degrees=0, translation_mm=10, scale=0,
                                intensity_scale=0, intensity_shift=0)
    transforms = sample_transforms(4, 64, spatial, spacing, config)
    points = np.full((64, 2, 2), 20.0, np.float32)
    moved, _ = apply_to_points(points, transforms)
    shift_mm = (moved.numpy() - points) * np.asarray(spacing)
    np.testing.assert_allclose(shift_mm[:, 0], shift_mm[:, 1], atol=1e-4)  # rigid shift
    assert np.abs(shift_mm).max() <= 10.0 + 1e-4
    assert np.abs(shift_mm).max() > 8.0  # the range is used


def test_intensity_and_scale_ranges():
    config = AugmentationConfig(rotation_degrees=0, translation_mm=0, scale=0.2,
                                intensity_scale=0.1, intensity_shift=0.3)
    t = sample_transforms(0, 256, (9, 11), 1.0, config)
    det = np.linalg.det(t["matrix"].numpy()[:, :2, :2])
    assert np.all(det >= 1 / 1.2 ** 2 - 1e-5) and np.all(det <= 1 / 0.8 ** 2 + 1e-5)
    s, h = t["intensity_scale"].numpy(), t["intensity_shift"].numpy()
    assert np.all(np.abs(s - 1) <= 0.1 + 1e-6) and np.all(np.abs(h) <= 0.3 + 1e-6)
    assert s.std() > 0.03 and h.std() > 0.1


def test_seed_generator_advances_and_int_seed_repeats():
    spatial, spacing = GRIDS[2]
    generator = keras.random.SeedGenerator(3)
    a = sample_transforms(generator, 2, spatial, spacing)["matrix"].numpy()
    b = sample_transforms(generator, 2, spatial, spacing)["matrix"].numpy()
    assert not np.allclose(a, b)
    c = sample_transforms(5, 2, spatial, spacing)["matrix"].numpy()
    d = sample_transforms(5, 2, spatial, spacing)["matrix"].numpy()
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(c[0], c[1])  # samples of one batch differ


def test_landmark_pushed_out_of_field_gets_weight_zero():
    spatial, spacing = (21, 25), (1.0, 1.0)
    config = AugmentationConfig(rotation_degrees=0, translation_mm=50, scale=0,
                                intensity_scale=0, intensity_shift=0)
    transforms = sample_transforms(0, 16, spatial, spacing, config)
    points = np.tile(np.array([[12.0, 10.0]], np.float32), (16, 1, 1))
    moved, valid = apply_to_points(points, transforms)
    inside = np.all((moved.numpy() >= -0.5) & (moved.numpy() < np.array([24.5, 20.5])), -1)
    np.testing.assert_array_equal(valid.numpy(), inside.astype(np.float32))
    assert 0 < valid.numpy().sum() < 16


@pytest.mark.parametrize("ndim", [2, 3])
def test_gaussian_blur_of_a_dot_has_each_images_own_standard_deviation_per_axis(ndim):
    spatial = (41, 37) if ndim == 2 else (25, 29, 27)
    images = np.zeros((3, *spatial, 1), np.float32)
    centre = tuple(n // 2 for n in spatial)
    images[(slice(None), *centre, 0)] = 1.0
    # sigma >= 1 pixel: narrower Gaussians sampled at the pixels have a smaller discrete SD.
    sigma_xyz = np.array([[0.0] * ndim, [2.0, 3.0, 1.5][:ndim], [1.0, 1.2, 2.5][:ndim]], np.float32)
    blurred = gaussian_blur(images, sigma_xyz).numpy()[..., 0]
    np.testing.assert_allclose(blurred[0], images[0, ..., 0], atol=1e-6)  # sigma 0: unchanged
    for b in (1, 2):
        np.testing.assert_allclose(blurred[b].sum(), 1.0, rtol=2e-3)  # rows at the border: renormalised
        assert np.unravel_index(blurred[b].argmax(), spatial) == centre
        grids = np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij")
        for axis in range(ndim):  # array axis `axis` is x, y[, z] component ndim - 1 - axis
            sd = np.sqrt((blurred[b] * (grids[axis] - centre[axis]) ** 2).sum())
            np.testing.assert_allclose(sd, sigma_xyz[b, ndim - 1 - axis], rtol=0.02)


def test_gaussian_blur_keeps_a_constant_image_constant_up_to_the_border():
    images = np.full((2, 16, 20, 1), 3.0, np.float32)
    blurred = gaussian_blur(images, np.array([[4.0, 4.0], [9.0, 2.0]], np.float32)).numpy()
    np.testing.assert_allclose(blurred, images, rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_blur_and_noise_augmentation_touch_images_only_and_only_when_on(ndim):
    spatial, spacing = GRIDS[ndim]
    rng = np.random.default_rng(1)
    images = rng.normal(size=(64, *spatial, 1)).astype(np.float32)
    plain = AugmentationConfig.identity()
    assert not {"blur_sigma", "noise"} & set(sample_transforms(0, 2, spatial, spacing, plain))
    noisy = AugmentationConfig(**{**plain.__dict__, "noise_std": 0.5})
    t = sample_transforms(0, 64, spatial, spacing, noisy)
    assert t["noise"].shape == (64, *spatial, 1) and "blur_sigma" not in t
    out = apply_to_images(images, t).numpy()
    np.testing.assert_allclose(out - images, t["noise"].numpy(), atol=1e-5)
    per_sample_sd = (out - images).reshape(64, -1).std(1)
    assert per_sample_sd.max() <= 0.5 * 1.1 and per_sample_sd.min() < 0.1 and per_sample_sd.max() > 0.4
    np.testing.assert_allclose(apply_to_images(images, t, intensity=False).numpy(), images, atol=1e-5)
    blurry = AugmentationConfig(**{**plain.__dict__, "blur_mm": 3.0})
    t = sample_transforms(0, 64, spatial, spacing, blurry)
    sigma_mm = t["blur_sigma"].numpy() * np.asarray(spacing)
    np.testing.assert_allclose(sigma_mm, np.repeat(sigma_mm[:, :1], ndim, 1), rtol=1e-5)  # isotropic in mm
    assert sigma_mm.max() <= 3.0 + 1e-5 and sigma_mm.min() < 0.5 and sigma_mm.max() > 2.5
    out = apply_to_images(images, t).numpy()
    np.testing.assert_allclose(out, gaussian_blur(images, t["blur_sigma"]).numpy(), atol=1e-5)
    assert out.std() < images.std()  # blurring removes the white noise
    np.testing.assert_allclose(apply_to_images(images, t, intensity=False).numpy(), images, atol=1e-5)


def test_local_stage_crops_get_noise_of_the_crop_grid():
    from keraslm.ops import choose_crop_landmarks, crop_stage

    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 40, 48, 1)).astype(np.float32)
    points = np.array([[[10.0, 12.0], [30.0, 20.0]], [[20.0, 25.0], [40.0, 30.0]]], np.float32)
    codec = HeatmapCodec((16, 16), stride=1, sigma=1.5)
    config = AugmentationConfig(rotation_degrees=0, translation_mm=0, scale=0, intensity_scale=0,
                                intensity_shift=0, blur_mm=1.0, noise_std=0.3)
    index = choose_crop_landmarks(points, 2, seed=0)
    transforms = sample_transforms(0, 4, (16, 16), 1.0, config)
    crops, heatmaps, weights, _ = crop_stage(images, points, index, transforms, codec)
    assert crops.shape == (4, 16, 16, 1) and np.all(np.isfinite(crops.numpy()))
    np.testing.assert_array_equal(weights.numpy().sum(1), [1, 1, 1, 1])
    wrong = sample_transforms(0, 2, (40, 48), 1.0, config)  # drawn on the whole grid
    with pytest.raises(ValueError, match="grid"):
        apply_to_images(images, wrong, output_shape=(16, 16))


# ---------------------------------------------------------------------------------------------
# The device stage under XLA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_device_stage_compiles_with_xla(ndim):
    spatial, spacing = GRIDS[ndim]
    spatial = tuple(n + 1 for n in spatial)  # even sizes: stride 2 divides them
    codec = HeatmapCodec(spatial, stride=2, sigma=1.5)
    generator = keras.random.SeedGenerator(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, *spatial, 1)).astype(np.float32)
    points = (rng.uniform(0.3, 0.7, (2, 3, ndim)) * np.array(spatial[::-1])).astype(np.float32)
    points[1, 1] = np.nan

    @tf.function(jit_compile=True)
    def step(x, p):
        transforms = sample_transforms(generator, 2, spatial, spacing, FULL)
        return device_stage(x, p, transforms, codec)

    x1, heatmaps, weights = step(images, points)
    x2, _, _ = step(images, points)
    assert x1.shape == images.shape and x1.dtype == tf.float32
    assert heatmaps.shape == (2, *codec.output_shape, 3) and heatmaps.dtype == tf.float32
    assert weights.shape == (2, 3)
    assert weights.numpy()[1, 1] == 0 and weights.numpy().sum() == 5
    assert np.abs(heatmaps.numpy()[1, ..., 1]).max() == 0  # missing landmark: empty target
    assert np.all(np.isfinite(x1.numpy())) and not np.allclose(x1.numpy(), x2.numpy())
    np.testing.assert_allclose(heatmaps.numpy().max(axis=tuple(range(1, ndim + 1)))[0], 1.0,
                               atol=0.1)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("rotation_degrees", -1.0, "`rotation_degrees` must be in [0, 180.0]. Received: "
                               "rotation_degrees=-1.0"),
    ("translation_mm", float("nan"), "`translation_mm` must be a finite number >= 0. "
                                     "Received: translation_mm=nan"),
    ("scale", 1.0, "`scale` must be in [0, 1.0). Received: scale=1.0"),
    ("axis_scale", -0.1, "`axis_scale` must be in [0, 1.0). Received: axis_scale=-0.1"),
    ("elastic_mm", "3", "`elastic_mm` must be a finite number >= 0. Received: elastic_mm='3'"),
    ("elastic_grid_points", 3, "`elastic_grid_points` must be an int >= 4 (cubic B-spline "
                               "control points per axis). Received: elastic_grid_points=3"),
    ("intensity_scale", 2.0, "`intensity_scale` must be in [0, 1.0). Received: "
                             "intensity_scale=2.0"),
    ("blur_mm", -0.5, "`blur_mm` must be a finite number >= 0. Received: blur_mm=-0.5"),
    ("noise_std", float("inf"), "`noise_std` must be a finite number >= 0. Received: "
                                "noise_std=inf"),
    ("flip_axes", "xx", "`flip_axes` must be a string of distinct axis names from 'xyz' (e.g. "
                        "'x'), or '' for none. Received: flip_axes='xx'"),
    ("flip_axes", ("x",), "`flip_axes` must be a string of distinct axis names from 'xyz' (e.g. "
                          "'x'), or '' for none. Received: flip_axes=('x',)"),
])
def test_bad_config_values(field, value, message):
    with pytest.raises(ValueError) as info:
        AugmentationConfig(**{field: value})
    assert str(info.value) == message


def test_bad_sampling_arguments():
    with pytest.raises(ValueError, match=r"Received: grid_shape=\(64,\)"):
        sample_transforms(0, 2, (64,), 1.0)
    with pytest.raises(ValueError, match=r"Received: grid_spacing=\(1.0, -1.0\)"):
        sample_transforms(0, 2, (16, 16), (1.0, -1.0))
    with pytest.raises(ValueError, match=r"Received: grid_spacing=\(1.0, 1.0, 1.0\)"):
        sample_transforms(0, 2, (16, 16), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        sample_transforms(0, 0, (16, 16), 1.0)
    with pytest.raises(ValueError, match="Received: seed='a'"):
        sample_transforms("a", 2, (16, 16), 1.0)
    with pytest.raises(ValueError, match="Received: config="):
        sample_transforms(0, 2, (16, 16), 1.0, config={"scale": 0.1})


def test_bad_points_and_images():
    transforms = sample_transforms(0, 2, (16, 18), 1.0)
    with pytest.raises(ValueError) as info:
        apply_to_points(np.zeros((2, 5)), transforms)
    assert str(info.value) == ("`points` must have shape (batch, num_landmarks, 2) with "
                               "coordinates (x, y) matching the 2D grid. Received: "
                               "points.shape=(2, 5)")
    with pytest.raises(ValueError, match=r"Received: points.shape=\(2, 5, 3\)"):
        apply_to_points(np.zeros((2, 5, 3)), transforms)  # 3D points, 2D transforms
    with pytest.raises(ValueError, match="points batch size=3, transforms batch size=2"):
        apply_to_points(np.zeros((3, 5, 2)), transforms)
    with pytest.raises(ValueError, match=r"Received: images.shape=\(2, 16, 18\)"):
        apply_to_images(np.zeros((2, 16, 18)), transforms)
    with pytest.raises(ValueError, match="expected matrices of shape \\(batch, 4, 4\\)"):
        apply_to_images(np.zeros((2, 16, 18, 5, 1)), transforms)  # 3D images, 2D transforms
    with pytest.raises(ValueError, match="not for these images"):
        apply_to_images(np.zeros((2, 16, 20, 1)), transforms)
    codec = HeatmapCodec((16, 18), sigma=2.0)
    with pytest.raises(ValueError, match=r"Received: points.shape=\(2, 5, 3\)"):
        device_stage(np.zeros((2, 16, 18, 1)), np.zeros((2, 5, 3)), transforms, codec)
    with pytest.raises(ValueError, match="codec.input_shape=\\(16, 18\\)"):
        device_stage(np.zeros((2, 8, 8, 1)), np.zeros((2, 5, 2)),
                     sample_transforms(0, 2, (8, 8), 1.0), codec)
    with pytest.raises(ValueError, match="Received: iterations=0"):
        apply_to_points(np.zeros((2, 5, 2)), transforms, iterations=0)


@pytest.mark.parametrize("ndim, axes", [(2, "x"), (3, "xz")])
def test_flips_mirror_images_and_points_alike_and_keep_the_other_draws(ndim, axes):
    """A flip mirrors about the grid centre along each named axis in about half the samples,
    image and landmarks alike (landmark identities kept); runs without flips keep their random
    stream."""
    grid_shape, spacing = GRIDS[ndim]
    batch = 64
    config = AugmentationConfig.identity()
    flipped = AugmentationConfig(**{**config.__dict__, "flip_axes": axes})
    transforms = sample_transforms(3, batch, grid_shape, spacing, flipped)
    images = np.random.default_rng(0).normal(size=(batch, *grid_shape, 1)).astype("float32")
    size_xyz = np.array(grid_shape[::-1], dtype="float32")
    points = np.random.default_rng(1).uniform(0, size_xyz - 1, (batch, 5, ndim)).astype("float32")
    moved_images = keras.ops.convert_to_numpy(apply_to_images(images, transforms, intensity=False))
    moved_points = keras.ops.convert_to_numpy(apply_to_points(points, transforms)[0])
    diagonal = np.diagonal(keras.ops.convert_to_numpy(transforms["matrix"]), axis1=1, axis2=2)
    mirrored = diagonal[:, :ndim] < 0  # (batch, x y [z])
    assert not mirrored[:, ["xyz".index(a) for a in "xyz"[:ndim] if a not in axes]].any()
    for axis in axes:
        share = mirrored[:, "xyz".index(axis)].mean()
        assert 0.25 < share < 0.75, share
    for sample in range(batch):
        expected_image, expected_points = images[sample], points[sample].copy()
        for axis in range(ndim):
            if mirrored[sample, axis]:
                expected_image = np.flip(expected_image, axis=ndim - 1 - axis)
                expected_points[:, axis] = size_xyz[axis] - 1 - expected_points[:, axis]
        np.testing.assert_allclose(moved_images[sample], expected_image, atol=1e-4)
        np.testing.assert_allclose(moved_points[sample], expected_points, atol=1e-3)
    plain = sample_transforms(3, batch, grid_shape, spacing, FULL)
    again = sample_transforms(3, batch, grid_shape, spacing,
                              AugmentationConfig(**{**FULL.__dict__, "flip_axes": ""}))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(plain["matrix"]),
                                  keras.ops.convert_to_numpy(again["matrix"]))


def test_a_flip_along_an_axis_the_grid_lacks_is_refused():
    with pytest.raises(ValueError, match="`flip_axes` names an axis a 2D grid does not have"):
        sample_transforms(0, 2, (16, 16), 1.0, AugmentationConfig(flip_axes="z"))
