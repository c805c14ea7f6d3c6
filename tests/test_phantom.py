"""Tests of keraslm.datasets.phantom: file layout, geometry, determinism, landmarks on anatomy."""
import json
import os
import re

import numpy as np
import pytest

from keraslm import DatasetError
from keraslm.datasets import phantom
from keraslm.datasets.phantom import files as phantom_files
from keraslm.datasets.phantom import (
    PHANTOM2D_LANDMARKS,
    PHANTOM3D_LANDMARKS,
    make_phantom,
    render_phantom,
)
from keraslm.io import Image, read_image, read_landmarks, write_png


def _read_folder(root):
    """(dataset.json, LandmarkTable, [Image]) read back through keraslm.io only."""
    with open(os.path.join(root, "dataset.json"), encoding="utf-8") as handle:
        description = json.load(handle)
    table = read_landmarks(os.path.join(root, "landmarks.csv"))
    images = []
    for image_id in table.ids:
        path = os.path.join(root, image_id)
        spacing = description["plain_image_spacing"] if path.endswith(".png") else None
        images.append(read_image(path, spacing=spacing))
    return description, table, images


def _value_at(image, points_index):
    """Pixel values at the nearest pixel of each point `(x, y[, z])`."""
    rounded = np.round(np.asarray(points_index)).astype(int)
    return image.array[tuple(rounded[:, axis] for axis in reversed(range(image.ndim)))]


@pytest.fixture(scope="module")
def folder2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "p2"
    make_phantom(root, ndim=2, num_images=4, seed=3)
    return root


@pytest.fixture(scope="module")
def folder3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "p3"
    make_phantom(root, ndim=3, num_images=2, seed=3)
    return root


def test_landmark_names():
    assert len(PHANTOM2D_LANDMARKS) == 37 and len(set(PHANTOM2D_LANDMARKS)) == 37
    assert len(PHANTOM3D_LANDMARKS) == 28 and len(set(PHANTOM3D_LANDMARKS)) == 28
    assert set(PHANTOM3D_LANDMARKS) <= set(PHANTOM2D_LANDMARKS)
    for name in PHANTOM2D_LANDMARKS:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name), name
    expected = {"finger2_tip", "thumb_tip", "capitate_center", "radius_styloid"}
    assert expected <= set(PHANTOM2D_LANDMARKS)


def test_2d_layout_and_description(folder2d):
    assert sorted(os.listdir(folder2d)) == ["dataset.json", "images", "landmarks.csv"]
    assert sorted(os.listdir(folder2d / "images")) == [
        "phantom2d_000.png",
        "phantom2d_001.dcm",
        "phantom2d_002.png",
        "phantom2d_003.dcm",
    ]
    description, table, _ = _read_folder(folder2d)
    assert description == {
        "name": "phantom2d",
        "ndim": 2,
        "landmarks_csv": "landmarks.csv",
        "landmark_units": "mm",
        "plain_image_spacing": [0.9, 1.0],
        "landmark_names": list(PHANTOM2D_LANDMARKS),
        "generator": {
            "version": 1,
            "ndim": 2,
            "num_images": 4,
            "seed": 3,
            "image_size": [256, 256],
            "spacing": [0.9, 1.0],
            "noise": 0.02,
            "max_rotation_deg": 15.0,
        },
    }
    extensions = ("png", "dcm", "png", "dcm")
    assert table.ids == tuple(f"images/phantom2d_00{i}.{e}" for i, e in enumerate(extensions))
    assert table.names == PHANTOM2D_LANDMARKS and table.points.shape == (4, 37, 2)
    with open(folder2d / "landmarks.csv", encoding="utf-8") as handle:
        assert handle.readline().startswith("image,thumb_cmc_x,thumb_cmc_y,")


def test_2d_files_carry_the_rendered_pixels_and_geometry(folder2d):
    _, table, images = _read_folder(folder2d)
    png, dicom = images[0], images[1]
    np.testing.assert_array_equal(png.spacing, [0.9, 1.0])  # Anisotropic, non-unit.
    assert png.spacing_source == "caller" and np.all(png.origin == 0)
    np.testing.assert_allclose(dicom.spacing, [0.9, 1.0])
    assert dicom.spacing_source == "PixelSpacing"
    np.testing.assert_allclose(dicom.origin, [-114.75, -127.5])  # Centred: non-zero origin.
    for index, (image, points_mm) in enumerate(zip(images, table.points)):
        assert image.array.shape == (256, 256)
        geometry = Image(np.zeros((256, 256)), image.spacing, image.origin)
        expected, expected_mm = render_phantom(np.random.default_rng([3, index]), geometry)
        np.testing.assert_array_equal(image.array, expected.array)
        np.testing.assert_allclose(points_mm, expected_mm, rtol=0, atol=1e-9)
        points_index = image.physical_to_index(points_mm)
        assert np.all(points_index >= 2) and np.all(points_index <= 253), points_index


def test_3d_files_share_an_oblique_anisotropic_geometry(folder3d):
    description, table, images = _read_folder(folder3d)
    assert sorted(os.listdir(folder3d / "images")) == ["phantom3d_000.nii.gz", "phantom3d_001"]
    assert table.ids == ("images/phantom3d_000.nii.gz", "images/phantom3d_001")
    assert description["name"] == "phantom3d" and description["ndim"] == 3
    assert description["plain_image_spacing"] is None
    assert description["landmark_names"] == list(PHANTOM3D_LANDMARKS)
    assert table.points.shape == (2, 28, 3)
    nifti, series = images
    assert nifti.array.shape == series.array.shape == (32, 96, 64)
    for image in images:
        np.testing.assert_allclose(image.spacing, [2.5, 2.2, 3.0], atol=1e-5)
        direction = image.direction
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)
        assert np.linalg.det(direction) == pytest.approx(1.0, abs=1e-6)
        assert np.max(np.abs(direction - np.eye(3))) > 0.1  # Really oblique.
        assert np.linalg.norm(image.origin) > 10
    np.testing.assert_allclose(nifti.direction, series.direction, atol=1e-6)
    np.testing.assert_allclose(nifti.origin, series.origin, atol=1e-4)
    for index, (image, points_mm) in enumerate(zip(images, table.points)):
        expected, expected_mm = render_phantom(
            np.random.default_rng([3, index]),
            Image(np.zeros((32, 96, 64)), image.spacing, image.origin, image.direction),
        )
        np.testing.assert_array_equal(image.array, expected.array)
        np.testing.assert_allclose(points_mm, expected_mm, rtol=0, atol=1e-3)
        points_index = image.physical_to_index(points_mm)
        assert np.all(points_index >= 2 - 1e-6)
        assert np.all(points_index <= np.array(image.size) - 3 + 1e-6), points_index


def test_make_phantom_returns_the_loaded_dataset(tmp_path):
    dataset = make_phantom(tmp_path / "p", num_images=2, image_size=64)
    table = read_landmarks(tmp_path / "p" / "landmarks.csv")
    assert dataset.name == "phantom2d" and dataset.ndim == 2 and len(dataset) == 2
    assert dataset.landmark_names == PHANTOM2D_LANDMARKS
    np.testing.assert_array_equal(dataset.points_mm, table.points)
    image = dataset.read_image(dataset.records[0])  # PNG: read with the recorded spacing.
    np.testing.assert_allclose(image.spacing, [3.6, 4.0])  # Same field of view at 64x64.


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_phantom(tmp_path / name, num_images=2, seed=seed, image_size=96)
    a, b, c = (_read_folder(tmp_path / name) for name in "abc")
    for image_a, image_b, image_c in zip(a[2], b[2], c[2]):
        np.testing.assert_array_equal(image_a.array, image_b.array)
        assert not np.array_equal(image_a.array, image_c.array)
    csv = [(tmp_path / name / "landmarks.csv").read_bytes() for name in "abc"]
    assert csv[0] == csv[1] and csv[0] != csv[2]
    assert np.max(np.abs(a[1].points - c[1].points)) > 1.0


def test_render_is_deterministic_and_varies():
    geometry = Image(np.zeros((64, 64)), spacing=(3.6, 4.0))
    first = render_phantom(np.random.default_rng(1), geometry)
    again = render_phantom(np.random.default_rng(1), geometry)
    other = render_phantom(np.random.default_rng(2), geometry)
    np.testing.assert_array_equal(first[0].array, again[0].array)
    np.testing.assert_array_equal(first[1], again[1])
    assert first[0].array.dtype == np.uint16 and first[0].array.max() < 4096
    assert not np.array_equal(first[1], other[1])


def test_anatomy_varies_between_images():
    geometry = Image(np.zeros((256, 256)), spacing=(0.9, 1.0))
    points = np.stack(
        [render_phantom(np.random.default_rng(seed), geometry, noise=0.0)[1] for seed in range(8)]
    )
    names = list(PHANTOM2D_LANDMARKS)

    def length(first, second):
        difference = points[:, names.index(first)] - points[:, names.index(second)]
        return np.linalg.norm(difference, axis=-1)

    # Finger lengths, hand scale and finger spread all differ between hands.
    assert np.std(length("finger3_mcp", "finger3_tip")) > 2.0
    assert np.std(length("finger2_tip", "finger5_tip")) > 2.0
    assert np.ptp(points[:, names.index("finger3_tip"), 0]) > 10.0  # Pose (mm).


def test_2d_landmarks_sit_on_the_anatomy_they_name():
    geometry = Image(np.zeros((256, 256)), spacing=(0.9, 1.0))
    names = list(PHANTOM2D_LANDMARKS)
    for seed in range(3):
        image, points_mm = render_phantom(np.random.default_rng(seed), geometry, noise=0.0)
        points_index = image.physical_to_index(points_mm)
        values = _value_at(image, points_index).astype(float)
        border = np.concatenate([image.array[:8].ravel(), image.array[:, -8:].ravel()])
        # Every landmark lies on bone or in a joint, well above the background.
        assert values.min() > np.percentile(border, 99) + 300
        for finger in ("thumb", "finger2", "finger3", "finger4", "finger5"):
            joint_name = f"{finger}_{'ip' if finger == 'thumb' else 'dip'}"
            tip, joint = points_mm[names.index(f"{finger}_tip")], points_mm[names.index(joint_name)]
            axis = (tip - joint) / np.linalg.norm(tip - joint)
            # The tip is on the end of the bone: brighter than the soft tissue 3 mm beyond it.
            beyond = _value_at(image, image.physical_to_index([tip + 3 * axis]))[0]
            assert values[names.index(f"{finger}_tip")] > beyond + 100.0
            # The joint is a gap: darker than the bones 3 mm on either side.
            near = _value_at(image, image.physical_to_index([joint + 3 * axis, joint - 3 * axis]))
            assert values[names.index(joint_name)] < near.min()
        # All fingertips look alike (same bone shape, no overlap), only their place differs.
        tips = np.round(points_index[[names.index(f"finger{i}_tip") for i in (2, 3, 4, 5)]])
        peaks = [image.array[y - 2 : y + 3, x - 2 : x + 3].max() for x, y in tips.astype(int)]
        assert np.ptp(peaks) < 0.15 * np.mean(peaks)


def test_3d_landmarks_sit_on_the_anatomy():
    geometry = phantom_files.file_geometry(3, (64, 96, 32), (2.5, 2.2, 3.0), "volume")
    image, points_mm = render_phantom(np.random.default_rng(0), geometry, noise=0.0)
    values = _value_at(image, image.physical_to_index(points_mm)).astype(float)
    corners = image.array[:, :6, :6]
    assert values.min() > corners.max() + 300


def test_existing_dataset_is_reused_and_never_silently_replaced(tmp_path, monkeypatch):
    root = tmp_path / "p"
    make_phantom(root, num_images=2, image_size=64)
    stamp = os.stat(root / "dataset.json").st_mtime_ns

    def fail(*args):
        raise AssertionError("regenerated")

    with monkeypatch.context() as patch:
        patch.setattr(phantom, "write_dataset", fail)
        make_phantom(root, num_images=2, image_size=64)  # Cache hit.
        make_phantom(root, num_images=2, image_size=64, overwrite=True)  # Still the same data.
    assert os.stat(root / "dataset.json").st_mtime_ns == stamp
    message = re.escape(str(root)) + r" exists and does not hold this phantom"
    with pytest.raises(DatasetError, match=message):
        make_phantom(root, num_images=3, image_size=64)
    make_phantom(root, num_images=3, image_size=64, overwrite=True)
    assert read_landmarks(root / "landmarks.csv").points.shape[0] == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="exists and does not hold this phantom"):
        make_phantom(other, num_images=1, image_size=64)
    assert (other / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(make_phantom(empty, num_images=1, image_size=64)) == 1
    assert sorted(os.listdir(tmp_path)) == ["empty", "other", "p"]  # No temporary leftovers.


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_write_png(path, image):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        write_png(path, image)

    monkeypatch.setattr(phantom_files, "write_png", failing_write_png)
    with pytest.raises(OSError, match="disk full"):
        make_phantom(tmp_path / "p", num_images=4, image_size=64)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"ndim": 4}, "`ndim` must be 2 or 3. Received: ndim=4"),
        ({"num_images": 0}, "`num_images` must be an integer >= 1. Received: num_images=0"),
        ({"num_images": 2.5}, "`num_images` must be an integer >= 1. Received: num_images=2.5"),
        ({"seed": -1}, "`seed` must be an integer >= 0. Received: seed=-1"),
        (
            {"image_size": (8, 256)},
            "`image_size` must be an integer >= 16 or 2 of them (x, y). "
            "Received: image_size=(8, 256)",
        ),
        (
            {"ndim": 3, "image_size": (64, 96)},
            "`image_size` must be an integer >= 16 or 3 of them (x, y, z). "
            "Received: image_size=(64, 96)",
        ),
        (
            {"image_size": "big"},
            "`image_size` must be an integer >= 16 or 2 of them (x, y). Received: image_size='big'",
        ),
        (
            {"spacing": (0.0, 1.0)},
            "`spacing` must be a positive number or 2 of them (mm along x, y). "
            "Received: spacing=(0.0, 1.0)",
        ),
        ({"noise": -0.1}, "`noise` must be a number in [0.0, 1.0]. Received: noise=-0.1"),
        (
            {"max_rotation_deg": 90},
            "`max_rotation_deg` must be a number in [0.0, 30.0]. Received: max_rotation_deg=90",
        ),
    ],
)
def test_bad_options_are_rejected_before_writing(tmp_path, arguments, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        make_phantom(tmp_path / "p", **arguments)
    assert not (tmp_path / "p").exists()


def test_hand_that_cannot_fit_is_reported(tmp_path):
    with pytest.raises(DatasetError, match=r"does not fit into an image of size \(64, 64\)"):
        make_phantom(tmp_path / "p", num_images=1, image_size=64, spacing=1.0)
    assert not (tmp_path / "p").exists()


def test_render_rejects_bad_geometry_and_options():
    rng = np.random.default_rng(0)
    with pytest.raises(DatasetError, match=r"`geometry` must be a keraslm.io.Image"):
        render_phantom(rng, np.zeros((64, 64)))
    skewed = Image(np.zeros((64, 64)), spacing=(3.6, 4.0), direction=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(DatasetError, match=r"`geometry.direction` must be orthonormal"):
        render_phantom(rng, skewed)
    geometry = Image(np.zeros((64, 64)), spacing=(3.6, 4.0))
    with pytest.raises(DatasetError, match=re.escape("Received: noise=nan")):
        render_phantom(rng, geometry, noise=float("nan"))
