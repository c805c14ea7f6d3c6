"""Tests of keraslm.data (records, units, splits) and the ISBI 2015 reader."""
import json
import os

import numpy as np
import pytest

from keraslm import DatasetError
from keraslm.data import from_csv, load_folder, read_id_list
from keraslm.errors import DatasetArgumentError
from keraslm.io import Image, LandmarkTable, read_landmarks, write_dicom, write_landmarks, write_png

ISBI_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "isbi2015-train")
SPACING = (0.5, 0.25)  # Of the PNGs in `folder`, which hold none.


@pytest.fixture
def folder(tmp_path):
    """12 small images: PNGs (no geometry) and DICOMs (with origin), index landmarks."""
    (tmp_path / "images").mkdir()
    ids, points = [], []
    for index in range(12):
        image_id = f"case{index:02d}"
        image = Image(np.full((20, 30), index, np.uint16), spacing=(0.5, 0.25), origin=(100.0, -50.0))
        if index % 2:
            write_dicom(tmp_path / "images" / f"{image_id}.dcm", image)
        else:
            write_png(tmp_path / "images" / f"{image_id}.png", image)
        ids.append(image_id)
        points.append([[index, 2.0], [np.nan, np.nan], [29.0, 19.0]])
    write_landmarks(tmp_path / "landmarks.csv", LandmarkTable(ids, ["a", "b", "c"], np.array(points)))
    return tmp_path


def test_from_csv_converts_index_through_each_image(folder):
    dataset = from_csv(folder / "landmarks.csv", units="index", spacing=SPACING)
    assert len(dataset) == 12 and dataset.ndim == 2 and dataset.landmark_names == ("a", "b", "c")
    png, dicom = dataset.record("case04"), dataset.record("case05")
    np.testing.assert_allclose(png.points_mm[0], [4 * 0.5, 2 * 0.25])  # PNG: origin 0.
    np.testing.assert_allclose(dicom.points_mm[0], [100 + 5 * 0.5, -50 + 2 * 0.25])  # DICOM origin.
    assert np.all(np.isnan(png.points_mm[1]))  # Missing stays missing.
    image = dataset.read_image(dicom)
    np.testing.assert_allclose(image.physical_to_index(dicom.points_mm[[0, 2]]), [[5, 2], [29, 19]])
    assert dataset.read_image(png).spacing_source == "caller"


def test_from_csv_mm_units_are_kept(folder):
    dataset = from_csv(folder / "landmarks.csv", units="mm", spacing=SPACING)
    np.testing.assert_allclose(dataset.record("case05").points_mm[0], [5.0, 2.0])
    with pytest.raises(DatasetError, match=r"`units` must be one of \('index', 'mm'\). Received: units='px'"):
        from_csv(folder / "landmarks.csv", units="px")


def test_missing_images_are_all_listed(folder):
    os.remove(folder / "images" / "case03.dcm")
    os.remove(folder / "images" / "case08.png")
    with pytest.raises(DatasetError, match=r"2 of 12 landmark rows have no image .*: case03, case08"):
        from_csv(folder / "landmarks.csv")


def test_landmark_dimension_must_match_image(folder):
    table = LandmarkTable(["case00"], ["a"], np.zeros((1, 1, 3)))
    write_landmarks(folder / "l3.csv", table)
    with pytest.raises(DatasetError, match=r"row 'case00' has 3D landmarks but its image .* is 2D"):
        from_csv(folder / "l3.csv", spacing=0.5)


def test_splits_are_reproducible_and_disjoint(folder):
    dataset = from_csv(folder / "landmarks.csv", spacing=SPACING)
    train, test = dataset.split(0.25, seed=3)
    assert len(test) == 3 and not set(train.ids) & set(test.ids)
    assert dataset.split(0.25, seed=3)[1].ids == test.ids
    assert dataset.split(0.25, seed=4)[1].ids != test.ids
    folds = dataset.kfold(3, seed=1)
    tested = [i for _, fold_test in folds for i in fold_test.ids]
    assert sorted(tested) == sorted(dataset.ids)  # Every record tested exactly once.
    for fold_train, fold_test in folds:
        assert len(fold_train) + len(fold_test) == 12 and not set(fold_train.ids) & set(fold_test.ids)
    assert dataset.fold(2, 3, seed=1)[1].ids == folds[2][1].ids
    reduced = train.reduced(5, seed=0)
    assert len(reduced) == 5 and set(reduced.ids) <= set(train.ids)
    assert train.reduced(5, seed=0).ids == reduced.ids


def test_split_arguments_are_checked(folder):
    dataset = from_csv(folder / "landmarks.csv", spacing=SPACING)
    with pytest.raises(DatasetError, match=r"`num_folds` must be an integer >= 2. Received: num_folds=1"):
        dataset.kfold(1)
    with pytest.raises(DatasetError, match=r"cannot make 13 folds of 12 records"):
        dataset.kfold(13)
    with pytest.raises(DatasetError, match=r"`fold` must be an integer in \[0, 4\]. Received: fold=5"):
        dataset.fold(5, 5)
    with pytest.raises(DatasetError, match=r"`num_images` must be an integer in \[1, 12\]. Received: num_images=20"):
        dataset.reduced(20)
    with pytest.raises(DatasetError, match=r"has no records with ids: nope, zip"):
        dataset.subset(["case01", "nope", "zip"])


def test_id_lists(folder):
    (folder / "test.txt").write_text("case01\n# a comment\n\ncase02  # inline\n")
    dataset = from_csv(folder / "landmarks.csv", spacing=SPACING)
    assert dataset.subset(read_id_list(folder / "test.txt")).ids == ("case01", "case02")
    with pytest.raises(DatasetError, match=r"absent\.txt: no such id list file"):
        read_id_list(folder / "absent.txt")


def test_load_folder_reads_dataset_json(folder):
    with pytest.raises(DatasetError, match="no dataset.json"):
        load_folder(folder)
    description = {
        "name": "tiny",
        "ndim": 2,
        "landmarks_csv": "landmarks.csv",
        "landmark_units": "index",
        "plain_image_spacing": [0.5, 0.25],
        "landmark_names": ["a", "b", "c"],
    }
    (folder / "dataset.json").write_text(json.dumps(description))
    dataset = load_folder(folder)
    assert dataset.name == "tiny" and dataset.image_spacing == (0.5, 0.25)
    np.testing.assert_allclose(dataset.record("case04").points_mm[0], [2.0, 0.5])
    (folder / "dataset.json").write_text(json.dumps({**description, "landmark_names": ["x"]}))
    with pytest.raises(DatasetError, match="landmark_names differ"):
        load_folder(folder)


def test_plain_images_need_a_spacing(folder, tmp_path_factory):
    """PNGs hold no pixel size: without one from the caller or dataset.json, loading them is an
    error naming the dataset (not a silent 1 mm per pixel); DICOMs alone need none."""
    from keraslm.datasets import load_dataset

    for units in ("index", "mm"):
        with pytest.raises(DatasetArgumentError, match=r"landmarks\.csv: 6 of 12 images hold no pixel "
                           r"spacing \(plain images such as PNG/JPEG: .*case00\.png.*--spacing MM"):
            from_csv(folder / "landmarks.csv", units=units)
    dicoms = read_landmarks(folder / "landmarks.csv")
    odd = [k for k, i in enumerate(dicoms.ids) if i.endswith(("1", "3", "5", "7", "9"))]
    write_landmarks(folder / "dicom.csv", LandmarkTable([dicoms.ids[k] for k in odd], dicoms.names,
                                                        dicoms.points[odd]))
    assert len(from_csv(folder / "dicom.csv", units="index")) == 6
    # A folder of images with a point list each.
    files = tmp_path_factory.mktemp("files")
    for name in ("a", "b"):
        write_png(files / f"{name}.png", np.zeros((8, 9), np.uint8))
        (files / f"{name}.txt").write_text("1,2\n3,4\n")
    with pytest.raises(DatasetArgumentError, match=rf"{files}: 2 of 2 images hold no pixel spacing"):
        load_dataset(str(files), units="index")
    loaded = load_dataset(str(files), units="index", spacing=0.5)
    np.testing.assert_allclose(loaded.record("b").points_mm, [[0.5, 1.0], [1.5, 2.0]])


def test_spacing_must_fit_the_dimension(folder):
    with pytest.raises(DatasetArgumentError, match=r"landmarks\.csv: spacing \[0\.1, 0\.2, 0\.3\] has 3 "
                       r"values for a 2D dataset; give one value for all axes or 2 \(x, y\)"):
        from_csv(folder / "landmarks.csv", spacing=(0.1, 0.2, 0.3))
    for bad in (float("nan"), (0.5, float("inf")), -1.0):
        with pytest.raises(DatasetArgumentError, match=r"landmarks\.csv: the pixel spacing must be "
                           r"positive finite mm"):
            from_csv(folder / "landmarks.csv", spacing=bad)


def test_arguments_must_agree_with_dataset_json(folder):
    """--units, --spacing and --root given for a folder with dataset.json: equal is fine, a
    contradiction is an error naming dataset.json and both values; the images say their spacing
    came from dataset.json."""
    from keraslm.datasets import load_dataset

    description = {"name": "tiny", "ndim": 2, "landmarks_csv": "landmarks.csv",
                   "landmark_units": "index", "plain_image_spacing": list(SPACING)}
    (folder / "dataset.json").write_text(json.dumps(description))
    dataset = load_dataset(str(folder), units="index", spacing=SPACING, root=str(folder))
    assert dataset.image_spacing == SPACING
    assert dataset.read_image_header(dataset.record("case04")).spacing_source == "dataset.json"
    assert dataset.read_image(dataset.record("case04")).spacing_source == "dataset.json"
    assert dataset.read_image_header(dataset.record("case05")).spacing_source == "PixelSpacing"
    with pytest.raises(DatasetArgumentError, match=r"dataset\.json says plain_image_spacing \[0\.5, "
                       r"0\.25\] mm, but spacing \[0\.3\] mm \(--spacing\) was given"):
        load_dataset(str(folder), spacing=0.3)
    with pytest.raises(DatasetArgumentError, match=r"dataset\.json says landmark_units 'index', but "
                       r"units 'mm' \(--units\) was given"):
        load_dataset(str(folder), units="mm")
    with pytest.raises(DatasetArgumentError, match=r"dataset\.json: its images are found in its "
                       r"folder .*, but root '.*elsewhere' \(--root\) was given"):
        load_dataset(str(folder), root=str(folder / "elsewhere"))
    # dataset.json without a spacing: the caller's is used, and needed for the PNGs.
    (folder / "dataset.json").write_text(json.dumps({**description, "plain_image_spacing": None}))
    with pytest.raises(DatasetArgumentError, match="6 of 12 images hold no pixel spacing"):
        load_dataset(str(folder))
    dataset = load_dataset(str(folder), spacing=SPACING)
    assert dataset.read_image_header(dataset.record("case04")).spacing_source == "caller"


def test_builtin_datasets_refuse_units_and_another_spacing():
    """A built-in dataset knows its units and spacing: --units and a different --spacing are
    errors instead of being ignored; its own spacing given again is fine."""
    from keraslm.datasets import load_dataset

    own = load_dataset("phantom2d")  # The default phantom, generated once into the cache.
    spacing = own.read_image_header(own.records[0]).spacing
    assert load_dataset("phantom2d", spacing=tuple(spacing)).ids == own.ids
    with pytest.raises(DatasetArgumentError, match="'phantom2d' knows the units of its landmarks"):
        load_dataset("phantom2d", units="index")
    with pytest.raises(DatasetArgumentError, match=r"'phantom2d' has \[.*\] mm pixels, but "
                       r"spacing \[0\.123\] mm \(--spacing\) was given"):
        load_dataset("phantom2d", spacing=0.123)
    with pytest.raises(DatasetArgumentError, match=r"'phantom2d'.* has 3 values for a 2D dataset"):
        load_dataset("phantom2d", spacing=(0.1, 0.1, 0.1))


@pytest.mark.skipif(not os.path.isdir(ISBI_ROOT), reason=f"ISBI 2015 folder absent: {ISBI_ROOT}")
def test_isbi2015_reader():
    from keraslm.datasets import ISBI2015_LANDMARKS, isbi2015

    dataset = isbi2015(ISBI_ROOT)
    assert len(dataset) == 150 and dataset.landmark_names == ISBI2015_LANDMARKS
    first = dataset.record("001")
    # landmarks.csv: sella of image 001 at pixel (835, 996); 0.1 mm pixels.
    np.testing.assert_allclose(first.points_mm[0], [83.5, 99.6])
    assert not np.any(np.isnan(dataset.points_mm))
    header = dataset.read_image_header(first)
    assert header.size == (1935, 2400)
    image = dataset.read_image(first)
    assert image.array.shape == (2400, 1935) and image.array.dtype == np.uint8
    assert [len(test) for _, test in dataset.kfold(5, seed=0)] == [30] * 5
    # The second doctor's table: the same images in the same order, other points.
    junior = isbi2015(ISBI_ROOT, landmarks_file="landmarks_junior.csv")
    assert junior.ids == dataset.ids
    np.testing.assert_allclose(junior.record("001").points_mm[0], [82.9, 99.1])  # pixel (829, 991)


def test_isbi2015_reader_errors(tmp_path):
    from keraslm.datasets import isbi2015, load_dataset

    with pytest.raises(DatasetError, match="not an ISBI 2015 folder"):
        isbi2015(tmp_path)
    with pytest.raises(DatasetError, match="no landmarks_junior.csv"):
        isbi2015(tmp_path, landmarks_file="landmarks_junior.csv")
    with pytest.raises(DatasetError, match="dataset 'isbi2015' needs its folder"):
        load_dataset("isbi2015")
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_split_by_id_files_is_checked(tmp_path):
    """--train-ids/--test-ids: an unknown id names its file; ids in both files (a held-out image
    also trained on) and a --fold beside them (it was ignored) are refused."""
    from keraslm.data import select_split
    from keraslm.errors import UsageError

    folder = tmp_path / "xrays"
    folder.mkdir()
    ids = [f"case{i}" for i in range(1, 6)]
    for name in ids:
        write_png(str(folder / f"{name}.png"), np.zeros((8, 8), np.uint8))
    write_landmarks(str(folder / "landmarks.csv"),
                    LandmarkTable(ids, ["p"], np.ones((5, 1, 2))))
    dataset = from_csv(str(folder / "landmarks.csv"), units="index", spacing=0.5)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("case1\ncase2\ncase3\n")
    test.write_text("case4\ncase5\n")
    parts = select_split(dataset, train_ids=str(train), test_ids=str(test))
    assert [list(p.ids) for p in parts] == [["case1", "case2", "case3"], ["case4", "case5"]]
    with pytest.raises(UsageError, match="--fold 1 and --train-ids/--test-ids both choose"):
        select_split(dataset, fold=1, train_ids=str(train), test_ids=str(test))
    test.write_text("case3\ncase9\n")
    with pytest.raises(DatasetError, match=r"test\.txt: dataset .* no records with ids: case9"):
        select_split(dataset, train_ids=str(train), test_ids=str(test))
    test.write_text("case3\ncase4\n")
    with pytest.raises(DatasetError, match=r"train\.txt and .*test\.txt share 1 id\(s\) \(case3\): "
                       "a held-out image would also be trained on"):
        select_split(dataset, train_ids=str(train), test_ids=str(test))
