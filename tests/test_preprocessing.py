"""Tests of keraslm.preprocessing: grid placement, resampling onto the grid, normalisation -
the TF implementation against NumPy references (`reference_preprocessing.py`, the host code
keraslm used before) and against per-point interpolation."""
import numpy as np
import pytest
import tensorflow as tf

import reference_preprocessing as reference
from keraslm import KeraslmError
from keraslm.io import Image
from keraslm.preprocessing import (
    NORMALIZATIONS,
    GridSpec,
    equalize,
    normalize,
    place_on_grid,
    prepare_on_grid,
    resample_to_grid,
)
from keraslm.training.pipeline import prepare_image
from keraslm.training.plan import largest_extent_mm, plan_grid


def reference_linear(array, points_index, fill_value):
    """NumPy reference: (bi/tri)linear interpolation at `(x, y[, z])` points, constant fill."""
    ndim = array.ndim
    result = np.zeros(len(points_index))
    for n, point in enumerate(points_index):
        low = np.floor(point).astype(int)
        value = 0.0
        for corner in np.ndindex(*(2,) * ndim):
            index = low + np.array(corner)
            weight = np.prod([1 - (point[d] - low[d]) if corner[d] == 0 else point[d] - low[d] for d in range(ndim)])
            inside = np.all(index >= 0) and np.all(index < np.array(array.shape[::-1]))
            value += weight * (array[tuple(index[::-1])] if inside else fill_value)
        result[n] = value
    return result


@pytest.mark.parametrize("ndim", [2, 3])
def test_resample_matches_reference(ndim):
    rng = np.random.default_rng(ndim)
    shape = (5, 7, 9)[-ndim:]
    image = Image(rng.random(shape).astype(np.float32), spacing=(0.7, 0.9, 1.1)[:ndim])
    grid = GridSpec((6, 11, 13)[-ndim:], spacing=1.0)
    placement = place_on_grid(image, grid)
    resampled = resample_to_grid(image.array, placement, grid, fill_value=-2.0).numpy()
    grid_points = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1).reshape(-1, ndim)
    expected = reference_linear(image.array, placement.grid_to_image_index(grid_points), -2.0)
    # meshgrid over (x, y[, z]) with ij indexing gives x-major order; the array is [.., y, x].
    np.testing.assert_allclose(resampled.transpose().reshape(-1), expected, atol=1e-5)


def test_placement_centres_and_keeps_aspect_ratio():
    image = Image(np.zeros((2400, 1935)), spacing=0.1)
    spacing = plan_grid(largest_extent_mm([image.size], [image.spacing]), 1, (64, 52))[1]
    assert spacing == pytest.approx(240.0 / 64)
    grid = GridSpec((64, 52), spacing)
    placement = place_on_grid(image, grid)
    centre_grid = (np.array(grid.size) - 1) / 2
    np.testing.assert_allclose(placement.grid_to_image_index(centre_grid), (np.array(image.size) - 1) / 2)
    # One grid step is the same number of mm along x and y: aspect ratio kept.
    step = placement.grid_to_image_index([[1, 1]]) - placement.grid_to_image_index([[0, 0]])
    np.testing.assert_allclose(step * image.spacing, [[spacing, spacing]])
    points = np.array([[3.25, 17.5], [1900.0, 2399.0]])
    np.testing.assert_allclose(placement.grid_to_image_index(placement.image_index_to_grid(points)), points)


def test_image_larger_than_field_is_rejected():
    image = Image(np.zeros((100, 80)), spacing=1.0, path="big.png")
    with pytest.raises(KeraslmError, match=r"big\.png \(\[80.0, 100.0\] mm\) is larger than the grid's field of view"):
        place_on_grid(image, GridSpec((64, 64), 1.0))
    with pytest.raises(KeraslmError, match="is 2D but the grid is 3D"):
        place_on_grid(image, GridSpec((8, 64, 64), 2.0))


def test_downsampling_averages_before_sampling():
    stripes = np.tile(np.array([0.0, 1.0], np.float32), (40, 20))  # 1-pixel stripes: aliasing bait.
    image = Image(stripes, spacing=0.1)
    grid = GridSpec((8, 8), 0.5)
    resampled = resample_to_grid(stripes, place_on_grid(image, grid), grid).numpy()
    np.testing.assert_allclose(resampled, 0.5, atol=0.11)


def test_a_spacing_off_by_rounding_gives_the_same_grid_image():
    """Twice the grid's pixels: the scale is 2 exactly or 1.99999997 depending on how the file
    stored the spacing, and the anti-aliasing box jumped from 3 pixels to 1 between them - the
    same scan as NIfTI and as a DICOM series gave landmarks ~a voxel apart."""
    pixels = np.random.default_rng(0).uniform(0, 255, (96, 96)).astype(np.float32)
    grid = GridSpec((48, 48), 2.2)
    images = [Image(pixels, spacing=(1.1, spacing)) for spacing in (1.1, 1.1 * (1 + 3e-8))]
    resampled = [resample_to_grid(pixels, place_on_grid(image, grid), grid).numpy()
                 for image in images]
    np.testing.assert_allclose(resampled[0], resampled[1], atol=1e-3)


def test_normalizations():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, size=(30, 40)).astype(np.uint16)
    equalized = normalize(array, "equalize_standardize").numpy()
    assert abs(equalized.mean()) < 1e-5 and abs(equalized.std() - 1) < 1e-4
    # Equalisation keeps the order of values.
    order = np.argsort(array.reshape(-1), kind="stable")
    assert np.all(np.diff(equalized.reshape(-1)[order]) >= -1e-6)
    assert abs(normalize(array, "subtract_mean").numpy().mean()) < 1e-3
    np.testing.assert_array_equal(normalize(array, "none").numpy(), array.astype(np.float32))
    with pytest.raises(KeraslmError, match=r"`normalization` must be one of .* Received: 'zscore'"):
        normalize(array, "zscore")


def _random_pixels(rng, shape, dtype):
    if np.issubdtype(dtype, np.integer):
        high = min(np.iinfo(dtype).max, 4000)
        return rng.integers(0, high, size=shape).astype(dtype)
    return (rng.normal(size=shape) * 100).round(1).astype(dtype)  # Ties, as real images have.


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("method", NORMALIZATIONS)
def test_normalize_matches_numpy_reference(dtype, method):
    array = _random_pixels(np.random.default_rng(1), (33, 47), dtype)
    np.testing.assert_allclose(normalize(array, method).numpy(), reference.normalize(array, method),
                               rtol=1e-5, atol=1e-5)


def test_equalize_of_integer_valued_floats_equals_integer_path():
    array = np.random.default_rng(2).integers(0, 300, (21, 19)).astype(np.uint16)
    np.testing.assert_array_equal(normalize(array, "equalize_standardize").numpy(),
                                  normalize(array.astype(np.float32), "equalize_standardize").numpy())


@pytest.mark.parametrize("ndim, shape, spacing, grid_shape", [
    (2, (47, 33), (0.3, 0.4), (16, 12)),        # downsampling, anti-aliased (widths 3..5)
    (2, (19, 23), (1.1, 0.9), (40, 36)),        # upsampling
    (3, (13, 21, 17), (0.5, 0.4, 0.9), (8, 10, 9)),
])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_prepare_image_matches_numpy_reference(ndim, shape, spacing, grid_shape, dtype):
    rng = np.random.default_rng(ndim)
    array = _random_pixels(rng, shape, dtype)
    image = Image(array, spacing=spacing)
    spacing_mm = plan_grid(largest_extent_mm([image.size], [image.spacing]), 1, grid_shape)[1] * 1.13
    grid = GridSpec(grid_shape, spacing_mm)
    placement = place_on_grid(image, grid)
    method = "equalize_standardize" if ndim == 2 else "standardize"
    expected = reference.resample_to_grid(reference.normalize(array, method), placement, grid)
    got, got_placement = prepare_image(image, grid, method)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(got_placement.grid_to_image, placement.grid_to_image)
    # The placement equals the former NumPy formula exactly.
    scale = np.array(grid.spacing) / image.spacing
    offset = (np.array(image.size) - 1) / 2 - scale * (np.array(grid.size) - 1) / 2
    np.testing.assert_allclose(placement.grid_to_image[:-1, :-1], np.diag(scale), rtol=1e-15)
    np.testing.assert_allclose(placement.grid_to_image[:-1, -1], offset, rtol=1e-12, atol=1e-12)


def test_prepare_on_grid_in_a_graph_rejects_an_image_larger_than_the_field():
    grid = GridSpec((16, 16), 1.0)
    function = tf.function(lambda array, spacing: prepare_on_grid(array, spacing, grid, "standardize"),
                           input_signature=[tf.TensorSpec([None, None], tf.float32),
                                            tf.TensorSpec([2], tf.float64)])
    grid_image, matrix = function(np.ones((10, 12), np.float32), np.array([1.0, 1.0]))
    assert grid_image.shape == (16, 16) and matrix.shape == (3, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than the field of view of the model"):
        function(np.ones((10, 12), np.float32), np.array([2.0, 1.0]))


def test_equalize_takes_large_integer_values_and_matches_the_sort_path():
    # Integer values beyond int32 over a small range take the per-value table (subtracting in
    # int64); the same values shifted by 0.5 are not integers and take the sort: equal answers.
    offsets = np.random.default_rng(3).integers(0, 50, (9, 11))
    large = (offsets + 2 ** 40).astype(np.float64)
    halves = offsets.astype(np.float64) + 0.5
    np.testing.assert_allclose(normalize(large, "equalize_standardize").numpy(),
                               normalize(halves, "equalize_standardize").numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(equalize(large).numpy(), equalize(halves).numpy(), rtol=1e-6)
