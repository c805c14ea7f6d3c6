"""Tests of keraslm.preprocessing: grid placement, resampling onto the grid, normalisation."""
import numpy as np
import pytest

from keraslm import KeraslmError
from keraslm.io import Image
from keraslm.preprocessing import (
    GridSpec,
    fitting_spacing,
    normalize,
    place_on_grid,
    resample_to_grid,
)


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
    resampled = resample_to_grid(image.array, placement, grid, fill_value=-2.0)
    grid_points = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1).reshape(-1, ndim)
    expected = reference_linear(image.array, placement.grid_to_image_index(grid_points), -2.0)
    # meshgrid over (x, y[, z]) with ij indexing gives x-major order; the array is [.., y, x].
    np.testing.assert_allclose(resampled.transpose().reshape(-1), expected, atol=1e-5)


def test_placement_centres_and_keeps_aspect_ratio():
    image = Image(np.zeros((2400, 1935)), spacing=0.1)
    spacing = fitting_spacing([image.size], [image.spacing], (64, 52))
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
    resampled = resample_to_grid(stripes, place_on_grid(image, grid), grid)
    np.testing.assert_allclose(resampled, 0.5, atol=0.11)


def test_normalizations():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, size=(30, 40)).astype(np.uint16)
    equalized = normalize(array, "equalize_standardize")
    assert abs(equalized.mean()) < 1e-5 and abs(equalized.std() - 1) < 1e-4
    # Equalisation keeps the order of values.
    order = np.argsort(array.reshape(-1), kind="stable")
    assert np.all(np.diff(equalized.reshape(-1)[order]) >= -1e-6)
    assert abs(normalize(array, "subtract_mean").mean()) < 1e-3
    np.testing.assert_array_equal(normalize(array, "none"), array.astype(np.float32))
    with pytest.raises(KeraslmError, match=r"`normalization` must be one of .* Received: 'zscore'"):
        normalize(array, "zscore")
