"""Tests of keraslm.prediction: predict() maps network output back to physical mm exactly."""
import json
import os
import re
import shutil

import numpy as np
import pytest

import keraslm
from keraslm import KeraslmError
from keraslm.errors import UsageError
from keraslm.commands.predict import main
from keraslm.prediction import load_predictor, predict
from keraslm.io import Image, read_landmarks


@pytest.fixture(scope="module")
def trained(trained_2d):
    """(dataset, TrainingResult) of conftest.py's `trained_2d`."""
    result, dataset = trained_2d
    return dataset, result


def test_predict_reproduces_training_validation_errors(trained):
    dataset, result = trained
    validation = dataset.subset(json.loads(open(os.path.join(result.output_dir, "metrics.json")).read())["validation_ids"])
    predictions = keraslm.predict(result.model_path, [r.image_path for r in validation.records],
                                  spacing=dataset.image_spacing)
    assert [p.image_id for p in predictions] == list(validation.ids)
    points_mm = np.stack([p.points_mm for p in predictions])
    errors = np.linalg.norm(points_mm - validation.points_mm, axis=-1)
    np.testing.assert_allclose(errors, result.errors_mm, atol=1e-3)
    first = predictions[0]
    assert first.points_index.shape == (37, 2) and first.confidence.shape == (37,)
    image = dataset.read_image(validation.records[0])
    np.testing.assert_allclose(image.index_to_physical(first.points_index), first.points_mm, atol=1e-9)


def test_predict_reuses_the_predictor_of_the_same_detector(trained, monkeypatch):
    """A detector given again is predicted by the predictor (and graph) of the previous call;
    another detector gets its own."""
    from keraslm.prediction import api, load_detector

    dataset, result = trained
    detector = load_detector(result.model_path)
    image = dataset.read_image(dataset.records[0])
    made = []
    load = api.load_predictor
    monkeypatch.setattr(api, "load_predictor", lambda *a, **k: made.append(a[0]) or load(*a, **k))
    first = keraslm.predict(detector, [image])[0]
    second = keraslm.predict(detector, [image])[0]
    assert made == [detector]
    np.testing.assert_array_equal(first.points_mm, second.points_mm)
    other = load_detector(result.model_path)
    third = keraslm.predict(other, [image])[0]
    assert made == [detector, other]
    np.testing.assert_allclose(third.points_mm, first.points_mm, atol=1e-6)
    keraslm.predict(result.model_path, [image])  # A path: loaded (and traced) on every call.
    keraslm.predict(result.model_path, [image])
    assert made[2:] == [result.model_path] * 2


def test_predict_cli_writes_csv_and_json(trained, tmp_path, capsys):
    dataset, result = trained
    images = tmp_path / "images"
    images.mkdir()
    for record in dataset.records[:2]:
        shutil.copy(record.image_path, images)
    assert main([result.model_path, str(images), "--spacing", str(dataset.image_spacing[0]),
                 "--output-dir", str(tmp_path / "out")]) in (0,)
    output = capsys.readouterr().out
    assert "finger2_tip" in output and " mm " in output
    table = read_landmarks(tmp_path / "out" / "predictions.csv")
    assert len(table) == 2 and table.names == dataset.landmark_names
    payload = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(payload["predictions"]) == 2


def test_predict_gives_images_with_the_same_name_unique_ids(trained, tmp_path, capsys):
    dataset, result = trained
    png, dcm = dataset.records[0].image_path, dataset.records[1].image_path
    assert png.endswith(".png") and dcm.endswith(".dcm")
    for folder in ("da", "db", "both"):
        (tmp_path / folder).mkdir()
    shutil.copy(png, tmp_path / "da" / "x.png")
    shutil.copy(png, tmp_path / "db" / "x.png")
    shutil.copy(png, tmp_path / "both" / "y.png")
    shutil.copy(dcm, tmp_path / "both" / "y.dcm")
    shutil.copy(dcm, tmp_path / "both" / "z.dcm")
    spacing = ",".join(str(s) for s in dataset.image_spacing)
    # Same stem in two folders: the path from the common folder, without the extension.
    assert main([result.model_path, str(tmp_path / "da" / "x.png"), str(tmp_path / "db" / "x.png"),
                 "--spacing", spacing, "--output-dir", str(tmp_path / "out")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    table = read_landmarks(tmp_path / "out" / "predictions.csv")
    assert table.ids == ("da/x", "db/x")
    np.testing.assert_array_equal(table.points[0], table.points[1])
    assert (tmp_path / "out" / "markups" / "db" / "x.mrk.json").is_file()
    # The same output folder again, one image: its markups folder holds that image only.
    assert main([result.model_path, str(tmp_path / "da" / "x.png"), "--spacing", spacing,
                 "--output-dir", str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out" / "markups")) == ["x.mrk.json"]
    # Same stem in one folder: the file name with its extension; other names stay stems.
    assert main([result.model_path, str(tmp_path / "both"), "--spacing", spacing,
                 "--output-dir", str(tmp_path / "out2")]) == 0
    assert read_landmarks(tmp_path / "out2" / "predictions_index.csv").ids == ("y.dcm", "y.png", "z")
    # The library names them alike, for paths and for read Images.
    from keraslm.prediction import input_image_ids

    predictions = predict(result.model_path, [str(tmp_path / "da" / "x.png"),
                                              dataset.read_image(dataset.records[0]),
                                              str(tmp_path / "db" / "x.png")],
                          spacing=dataset.image_spacing)
    assert [p.image_id for p in predictions] == ["da/x", "phantom2d_000", "db/x"]
    assert input_image_ids([str(tmp_path / "both" / "y.png"), str(tmp_path / "both" / "y.dcm")]) == [
        "y.png", "y.dcm"]
    # One file given twice cannot get two ids: an error before anything is predicted.
    capsys.readouterr()
    assert main([result.model_path, str(tmp_path / "da" / "x.png"), str(tmp_path / "da" / "x.png"),
                 "--spacing", spacing, "--output-dir", str(tmp_path / "out3")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: the same image is given more than once: ") and "x.png" in error
    assert "Traceback" not in error and not (tmp_path / "out3").exists()


def test_plain_images_need_a_spacing(trained, tmp_path, capsys):
    """PNG/JPEG files store no pixel spacing: predicting one without a spacing is an error that
    names the file and the spacing the model was trained on, not a silent 1 mm per pixel."""
    dataset, result = trained
    png, dcm = dataset.records[0].image_path, dataset.records[1].image_path
    detector = load_predictor(result.model_path).detector
    assert detector.spec.plain_image_spacing == tuple(dataset.image_spacing)
    trained_on = ",".join(f"{s:g}" for s in dataset.image_spacing)  # 2.88,3.55556
    expected = (r"phantom2d_000\.png: a PNG file stores no pixel spacing; give the mm per pixel "
                r"with --spacing MM or X,Y \(Python: spacing=\); the model was trained on plain "
                rf"images of {re.escape(trained_on)} mm per pixel \(--spacing "
                rf"{re.escape(trained_on)}\), likely the value for images like them$")
    with pytest.raises(UsageError, match=expected):
        predict(result.model_path, [png])
    with pytest.raises(UsageError, match=r"phantom2d_000\.png \(and 1 more such images\): a PNG"):
        predict(result.model_path, [dcm, png, dataset.records[2].image_path])
    # Without the training spacing in the spec (models trained before it): no hint.
    from keraslm.prediction import LandmarkDetector

    older = LandmarkDetector(detector.spec.replace(plain_image_spacing=None), detector.networks)
    with pytest.raises(UsageError, match=r"\(Python: spacing=\)$"):
        predict(older, [png])
    # DICOM carries its spacing; an Image its own; with the spacing given, PNGs predict.
    [from_dicom] = predict(result.model_path, [dcm])
    image = dataset.read_image(dataset.records[1])
    np.testing.assert_allclose(from_dicom.points_mm, predict(result.model_path, [image])[0].points_mm)
    predict(result.model_path, [png], spacing=dataset.image_spacing)
    # A spacing given for plain images does not replace the one a DICOM stores.
    [with_spacing] = predict(result.model_path, [dcm], spacing=dataset.image_spacing[0] * 3)
    np.testing.assert_allclose(with_spacing.points_mm, from_dicom.points_mm)
    # A DICOM without PixelSpacing stores none either: refused without a spacing, then used.
    import pydicom

    bare = pydicom.dcmread(dcm)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in bare:
            delattr(bare, keyword)
    bare.save_as(str(tmp_path / "bare.dcm"))
    with pytest.raises(UsageError, match=r"bare\.dcm: the file stores no pixel spacing"):
        predict(result.model_path, [str(tmp_path / "bare.dcm")])
    [given] = predict(result.model_path, [str(tmp_path / "bare.dcm")],
                      spacing=tuple(image.spacing))
    np.testing.assert_allclose(given.points_index, from_dicom.points_index, atol=1e-3)
    # The command: one error line, exit status 2, nothing written.
    capsys.readouterr()
    assert main([result.model_path, png, "--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {png}: a PNG file stores no pixel spacing")
    assert f"--spacing {trained_on})" in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and not (tmp_path / "out").exists()


def test_images_stored_in_another_orientation(trained, tmp_path):
    """An image stored with its rows bottom-up (the same anatomy in mm) is predicted like the
    original: the model brings it into the canonical frame. Models in storage order (keraslm
    0.2.1 and older, trained on images not stored canonically) refuse it, naming both
    orientations; models that recorded no orientation predict it as it is."""
    from keraslm.io import Image, write_nifti
    from keraslm.prediction import LandmarkDetector

    dataset, result = trained
    image = dataset.read_image(dataset.records[0])
    detector = load_predictor(result.model_path).detector
    assert detector.spec.canonical_orientation and detector.spec.storage_orientation is None
    height = image.array.shape[0]
    flipped = Image(image.array[::-1], spacing=image.spacing,
                    origin=image.index_to_physical([[0.0, height - 1.0]])[0],
                    direction=image.direction @ np.diag([1.0, -1.0]))
    np.testing.assert_allclose(flipped.index_to_physical([[3.0, height - 1.0 - 5.0]]),
                               image.index_to_physical([[3.0, 5.0]]))  # The same place in mm.
    write_nifti(str(tmp_path / "flipped.nii.gz"), flipped)
    original = predict(detector, [image])[0]
    for item in (flipped, str(tmp_path / "flipped.nii.gz")):
        mirrored = predict(detector, [item])[0]
        np.testing.assert_allclose(mirrored.points_mm, original.points_mm, atol=1e-3)
        np.testing.assert_allclose(mirrored.points_index[:, 1], height - 1 - original.points_index[:, 1],
                                   atol=1e-3)
    in_storage_order = LandmarkDetector(detector.spec.replace(
        canonical_orientation=False, storage_orientation=("+x", "-y")), detector.networks)
    for item in (image,):
        with pytest.raises(KeraslmError, match=(
                r"^(image0000|.*\.png): the image stores its voxels along other axes or "
                r"directions than the training images of the model \(\+x -y\)")):
            predict(in_storage_order, [item])
    predict(in_storage_order, [flipped])  # Stored like its training images: predicted.
    unrecorded = LandmarkDetector(detector.spec.replace(canonical_orientation=False),
                                  detector.networks)
    predict(unrecorded, [flipped])


def test_predict_cli_output_dir_that_is_a_file(trained, tmp_path, capsys):
    dataset, result = trained
    (tmp_path / "taken").write_text("keep me")
    assert main([result.model_path, dataset.records[0].image_path, "--output-dir",
                 str(tmp_path / "taken")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "keep me"


def test_predict_bad_input(trained, tmp_path):
    dataset, result = trained
    volume = Image(np.zeros((8, 16, 16), np.float32), spacing=1.0)
    with pytest.raises(KeraslmError, match=r"image 0 is 3D but the model expects 2D images"):
        predict(result.model_path, [volume])
    from keraslm.prediction import load_input_image

    slice_file = dataset.records[1].image_path  # One 2D DICOM, as a series' slice would be.
    with pytest.raises(KeraslmError, match=r"\.dcm is 2D but the model expects 3D images; a "
                       r"DICOM series .* give its folder \(keraslm-predict FOLDER --series\)"):
        load_input_image(slice_file, 0, 3)
    broken = Image(np.full((16, 16), np.nan, np.float32), spacing=1.0)
    with pytest.raises(KeraslmError, match=r"image 0 contains non-finite pixel values"):
        predict(result.model_path, [broken])
    # model.keras is self-describing: a copy alone predicts the same.
    lonely = tmp_path / "lonely.keras"
    shutil.copy(result.model_path, lonely)
    image = dataset.read_image(dataset.records[0])
    np.testing.assert_array_equal(predict(str(lonely), [image])[0].points_mm,
                                  predict(result.model_path, [image])[0].points_mm)
    import keras

    detector = keras.saving.load_model(result.model_path, safe_mode=True)
    assert detector.spec.landmark_names == tuple(dataset.landmark_names)
    # A bare network (an early keraslm 0.1 saved one with model.json beside it) is refused,
    # saying how to wrap it.
    bare = tmp_path / "bare.keras"
    detector.networks[0].save(bare)
    with pytest.raises(KeraslmError, match=r"bare\.keras: a bare Keras network, not a keraslm "
                       r"detector: an early keraslm 0\.1 run"):
        load_predictor(str(bare))
    # A run folder is a model too.
    np.testing.assert_array_equal(predict(result.output_dir, [image])[0].points_mm,
                                  predict(result.model_path, [image])[0].points_mm)
    # A truncated file is named as such, not "file not found".
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(open(result.model_path, "rb").read()[:1000])
    with pytest.raises(KeraslmError, match=r"truncated\.keras: not a readable \.keras model file"):
        load_predictor(str(truncated))


@pytest.mark.slow
def test_python_m_keraslm_predict_prints_named_landmarks(trained, tmp_path):
    import subprocess
    import sys

    dataset, result = trained
    path = dataset.records[0].image_path
    [prediction] = keraslm.predict(result.model_path, [path], spacing=dataset.image_spacing)
    assert prediction.points_mm.shape == (37, 2)
    output = subprocess.run(
        [sys.executable, "-m", "keraslm", "predict", result.model_path, path, "--spacing",
         str(dataset.image_spacing[0]), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, check=True).stdout
    for name in dataset.landmark_names:
        assert name in output
    assert " mm " in output
    # `keraslm.predict` stays the function (no module of that name replaces it).
    assert callable(keraslm.predict) and not hasattr(keraslm.predict, "__path__")
    usage = subprocess.run([sys.executable, "-m", "keraslm"], capture_output=True, text=True)
    assert usage.returncode == 2 and "predict" in usage.stderr and "export" in usage.stderr


SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "saved_models", "isbi2015_scn", "8")
ISBI_IMAGE = os.path.join(os.path.dirname(SHIPPED), "..", "..", "..", "shared", "data",
                          "isbi2015-train", "images", "001.jpg")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(ISBI_IMAGE), reason="ISBI 2015 images not found")
def test_shipped_isbi2015_model_finds_the_landmarks_of_a_training_image(tmp_path):
    import subprocess
    import sys

    from keraslm.datasets import isbi2015

    output = subprocess.run(
        [sys.executable, "-m", "keraslm", "predict", SHIPPED, ISBI_IMAGE, "--spacing", "0.1",
         "--output-dir", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    dataset = isbi2015(os.path.dirname(os.path.dirname(ISBI_IMAGE)))
    assert len(dataset.landmark_names) == 19
    for name in dataset.landmark_names:
        assert name in output
    predicted = read_landmarks(str(tmp_path / "predictions.csv"))
    truth = dataset.subset(["001"]).points_mm[0]
    # A training image of the shipped model: every landmark within a few millimetres.
    errors = np.linalg.norm(predicted.points[0] - truth, axis=-1)
    assert np.median(errors) < 2.0 and errors.max() < 10.0


def test_a_model_keras_of_keraslm_0_1_loads_through_the_upgrade(trained):
    """keraslm 0.1 saved `LandmarkDetector(network, metadata)`: its config (network, metadata
    dict) is read by `keraslm.spec.upgrade_spec` and predicts as the current form."""
    import keras

    from keraslm.prediction import LandmarkDetector, load_detector

    dataset, result = trained
    detector = load_detector(result.model_path)
    stage = detector.spec.global_stages[0]
    old_metadata = {  # What keraslm 0.1's model_metadata wrote, training's records included.
        "format": "keraslm-landmarks/1", "architecture": stage.architecture,
        "landmark_names": list(detector.spec.landmark_names), "ndim": 2,
        "grid_shape": list(stage.grid_shape), "grid_spacing": list(stage.grid_spacing),
        "normalization": stage.normalization, "output_stride": stage.output_stride,
        "size_divisor": stage.size_divisor, "sigma": stage.sigma, "decode_method": "quadratic",
        "stage": "global", "training_precision": stage.training_precision,
        "plain_image_spacing": list(dataset.image_spacing), "storage_orientation": ["+x", "+y"]}
    config = {"name": "landmark_detector", "trainable": True, "dtype": None,
              "network": keras.saving.serialize_keras_object(detector.networks[0]),
              "metadata": old_metadata, "local_network": None, "local_metadata": None}
    old = LandmarkDetector.from_config(config)
    old.networks[0].set_weights(detector.networks[0].get_weights())
    # keraslm 0.1 did not record the training positions (the mean-position baseline).
    assert old.spec == detector.spec.replace(mean_position_mm=None)
    image = dataset.read_image(dataset.records[0])
    np.testing.assert_array_equal(predict(old, [image])[0].points_mm,
                                  predict(detector, [image])[0].points_mm)


def test_write_predictions_flags_above_the_given_threshold(tmp_path):
    """`write_predictions(..., flag_mm)` (keraslm-predict --flag-mm): the `check` column of
    expected_error.csv and the JSON's `check` name the landmarks whose expected error is above
    the threshold (2.5 mm by default), and the JSON records the threshold."""
    from keraslm.prediction import FLAG_MM, Prediction, write_predictions

    names = ("a", "b", "c")
    prediction = Prediction("img", "img.png", names, np.zeros((3, 2)), np.zeros((3, 2)),
                            np.ones(3), spread_mm=np.ones(3),
                            expected_error_mm=np.array([1.0, 2.0, 3.0]))
    for flag_mm, flagged in ((None, ["c"]), (1.5, ["b", "c"]), (5.0, [])):
        folder = tmp_path / str(flag_mm)
        write_predictions(str(folder), [prediction],
                          **({} if flag_mm is None else {"flag_mm": flag_mm}))
        rows = (folder / "expected_error.csv").read_text().splitlines()
        assert rows[0] == "id,a,b,c,check"
        assert rows[1] == "img,1.000,2.000,3.000," + ";".join(flagged)
        payload = json.loads((folder / "predictions.json").read_text())
        assert payload["flag_mm"] == (FLAG_MM if flag_mm is None else flag_mm)
        landmarks = payload["predictions"][0]["landmarks"]
        assert [name for name in names if landmarks[name]["check"]] == flagged


def test_write_predictions_replaces_the_set_or_nothing(tmp_path, monkeypatch):
    """A failure while writing (a full disk at the markups) leaves the previous prediction's
    files as they were - not new CSVs beside an old JSON - and no staging folder; an
    uncalibrated prediction afterwards removes the old expected_error.csv."""
    import keraslm.prediction.api as api
    from keraslm.prediction import Prediction, write_predictions

    names = ("a", "b")

    def prediction(image_id, value, expected=None):
        return Prediction(image_id, f"{image_id}.png", names, np.full((2, 2), value),
                          np.full((2, 2), value), np.ones(2), spread_mm=np.ones(2),
                          expected_error_mm=expected)

    folder = tmp_path / "out"
    write_predictions(str(folder), [prediction("old", 1.0, np.array([1.0, 3.0]))])
    before = {name: (folder / name).read_bytes() for name in
              ("predictions.csv", "predictions_index.csv", "predictions.json", "expected_error.csv")}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "_markup_points", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_predictions(str(folder), [prediction("new", 2.0, np.array([1.0, 1.0]))])
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(folder / "markups")) == ["old.mrk.json"]
    assert sorted(os.listdir(folder)) == sorted([*before, "markups"])  # No staging left.
    monkeypatch.undo()
    write_predictions(str(folder), [prediction("new", 2.0)])
    assert not (folder / "expected_error.csv").exists()
    assert sorted(os.listdir(folder / "markups")) == ["new.mrk.json"]
    assert read_landmarks(folder / "predictions.csv").ids == ("new",)


def test_spacing_given_for_files_without_one(tmp_path):
    """`spacing=` (--spacing) for a DICOM that stores no pixel spacing is its in-plane spacing:
    a series keeps the slice gap of its slices' positions (x, y, z given are taken as they are);
    a plain 2D image given three values, or a missing file, is an error naming the file."""
    import pydicom

    from keraslm.errors import ImageReadError
    from keraslm.io import Image, write_dicom_series, write_image
    from keraslm.prediction import load_input_image

    volume = Image(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6),
                   spacing=(0.7, 0.8, 2.5))
    folder = tmp_path / "series"
    write_dicom_series(str(folder), volume)
    for path in folder.iterdir():
        ds = pydicom.dcmread(str(path))
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(str(path))
    with pytest.raises(UsageError, match="series: the file stores no pixel spacing"):
        load_input_image(str(folder), 0, 3)
    for given, expected in ((0.5, (0.5, 0.5, 2.5)), ((0.4, 0.6), (0.4, 0.6, 2.5)),
                            ((0.4, 0.6, 3.0), (0.4, 0.6, 3.0))):
        _, _, image = load_input_image(str(folder), 0, 3, spacing=given)
        np.testing.assert_allclose(image.spacing, expected, rtol=1e-6)
    png = tmp_path / "plain.png"
    write_image(str(png), Image(np.zeros((6, 7), np.uint8), spacing=1.0))
    with pytest.raises(UsageError, match=r"plain\.png: --spacing gives 3 values .*this image "
                       r"is 2D: give MM or X,Y"):
        load_input_image(str(png), 0, 2, spacing=(0.1, 0.1, 0.1))
    _, _, image = load_input_image(str(png), 0, 2, spacing=(0.1, 0.2))
    np.testing.assert_allclose(image.spacing, (0.1, 0.2))
    with pytest.raises(ImageReadError, match=r"missing\.png: no such image file or folder"):
        load_input_image(str(tmp_path / "missing.png"), 0, 2, spacing=0.1)


def test_write_predictions_refuses_a_markups_folder_with_other_files(tmp_path):
    """The markups folder is replaced whole with every prediction: one holding a file that is
    not a markups file of the previous prediction (its predictions.json) - a note, a
    hand-corrected copy saved from Slicer - is refused before anything is written (the user's
    file kept); the previous prediction's markups are replaced. A folder where a prediction
    file goes, or a file where the markups folder goes, is refused up front too (found after
    every image was predicted, and the set was left half moved)."""
    import shutil

    from keraslm.errors import KeraslmError
    from keraslm.prediction import Prediction, check_prediction_folder, write_predictions

    def prediction(image_id):
        return Prediction(image_id, f"{image_id}.png", ("a", "b"), np.zeros((2, 2)),
                          np.zeros((2, 2)), np.ones(2))

    folder = tmp_path / "out"
    write_predictions(str(folder), [prediction("old")])
    write_predictions(str(folder), [prediction("img")])
    assert sorted(p.name for p in (folder / "markups").iterdir()) == ["img.mrk.json"]
    for mine in (folder / "markups" / "notes.txt", folder / "markups" / "img_corrected.mrk.json"):
        shutil.copy(folder / "markups" / "img.mrk.json", mine)
        (folder / "predictions.csv").unlink()
        for call in (lambda: check_prediction_folder(str(folder)),
                     lambda: write_predictions(str(folder), [prediction("img")])):
            with pytest.raises(KeraslmError, match=f"{mine.name}: not a markups file of the "
                               "previous prediction"):
                call()
        assert mine.exists() and not (folder / "predictions.csv").exists()
        mine.unlink()
        write_predictions(str(folder), [prediction("img")])
    with pytest.raises(KeraslmError, match="is a file, not a folder"):
        check_prediction_folder(str(folder / "predictions.json"))
    (folder / "predictions_index.csv").unlink()
    (folder / "predictions_index.csv").mkdir()
    with pytest.raises(KeraslmError, match=r"predictions_index.csv is a folder; the predictions "
                       "write a file of that name"):
        check_prediction_folder(str(folder))
    other = tmp_path / "other"
    other.mkdir()
    (other / "markups").write_text("")
    with pytest.raises(KeraslmError, match="markups is a file; the predictions write a folder"):
        check_prediction_folder(str(other))
    with pytest.raises(KeraslmError, match="no predictions to write"):
        write_predictions(str(tmp_path / "none"), [])


def test_predict_command_checks_inputs_and_output_before_predicting(trained, tmp_path, capsys):
    """keraslm-predict: a missing image is named (exit 1) and a markups folder holding a user's
    file refused (exit 2: choose another --output-dir) before the model loads; a folder's images are predicted in natural
    order (2 before 10)."""
    dataset, result = trained
    spacing = ",".join(str(s) for s in dataset.image_spacing)
    png = dataset.records[0].image_path
    assert main([result.model_path, str(tmp_path / "typo.png"), "--spacing", spacing,
                 "--output-dir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'typo.png'}: no such image file or folder\n"
    (tmp_path / "used" / "markups").mkdir(parents=True)
    (tmp_path / "used" / "markups" / "mine.txt").write_text("mine")
    assert main([result.model_path, png, "--spacing", spacing,
                 "--output-dir", str(tmp_path / "used")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "mine.txt: not a markups file of the previous prediction" in error
    assert sorted(os.listdir(tmp_path / "used")) == ["markups"]
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("10.png", "2.png", "1.png"):
        shutil.copy(png, folder / name)
    (folder / "thumbs").mkdir()  # Not a DICOM series: skipped with a note, not an abort.
    shutil.copy(png, folder / "thumbs" / "1.png")
    assert main([result.model_path, str(folder), "--spacing", spacing,
                 "--output-dir", str(tmp_path / "sorted")]) == 0
    assert f"note: {folder / 'thumbs'} skipped: a sub-folder without DICOM files" in (
        capsys.readouterr().err)
    ids = [row.split(",")[0] for row in
           (tmp_path / "sorted" / "predictions.csv").read_text().splitlines()[1:]]
    assert ids == ["1", "2", "10"]


def test_predict_skip_errors_predicts_the_other_images(trained, tmp_path, capsys):
    """keraslm-predict: an unreadable image among good ones stops the run with nothing written
    (and says so); with --skip-errors it is named and left out, the others are written, and
    the exit status is 1. Progress is shown per image; the library's `on_error` gets the id."""
    dataset, result = trained
    spacing = ",".join(str(s) for s in dataset.image_spacing)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        shutil.copy(dataset.records[0].image_path, folder / name)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    assert main([result.model_path, str(folder), "--spacing", spacing,
                 "--output-dir", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"error: {folder / 'b.png'}" in error and "nothing written (--skip-errors" in error
    assert not out.exists()
    assert main([result.model_path, str(folder), "--spacing", spacing, "--skip-errors",
                 "--output-dir", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"error: {folder / 'b.png'}" in captured.err and "(skipped)" in captured.err
    assert "predicted 1/3: a" in captured.err and "predicted 3/3: c" in captured.err
    assert "error: 1 of 3 images skipped (not in the output): b" in captured.err
    assert read_landmarks(out / "predictions.csv").ids == ("a", "c")
    assert sorted(os.listdir(out / "markups")) == ["a.mrk.json", "c.mrk.json"]
    # Nothing readable: nothing written, exit 1.
    assert main([result.model_path, str(folder / "b.png"), "--spacing", spacing,
                 "--skip-errors", "--output-dir", str(tmp_path / "none")]) == 1
    assert "none of the 1 images could be predicted" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    failed, messages = [], []
    found = keraslm.predict(  # The package's own predict passes them on.
        result.model_path, [str(folder / n) for n in ("a.png", "b.png", "c.png")],
        spacing=dataset.image_spacing,
        on_error=lambda image_id, error: failed.append((image_id, str(error))),
        progress=messages.append)
    assert [p.image_id for p in found] == ["a", "c"] and [f[0] for f in failed] == ["b"]
    assert "b.png" in failed[0][1]
    assert messages == ["predicted 1/3: a", "predicted 3/3: c"]


def test_predict_takes_a_generator_and_names_an_array(trained):
    """`keraslm.predict(model, Path.glob(...))` returned [] without a word (the generator was
    used up by the ids); a bare array was a TypeError from os.fspath."""
    import pathlib

    from keraslm.prediction import load_predictor

    dataset, result = trained
    png = pathlib.Path(next(r.image_path for r in dataset.records if r.image_path.endswith(".png")))
    predictor = load_predictor(result.model_path)
    found = keraslm.predict(predictor, png.parent.glob(png.name), spacing=dataset.image_spacing)
    assert [p.image_id for p in found] == [png.stem]
    with pytest.raises(UsageError, match=r"an image must be a path or a keraslm.io.Image. "
                       r"Received: ndarray \(an array: Image\(array, spacing=...\)\)"):
        keraslm.predict(predictor, [np.zeros((8, 8))])
    # A spacing of three values for a 2D model: one usage error before any image is read
    # (with --skip-errors it was skipped image by image).
    with pytest.raises(UsageError, match="--spacing gives 3 values .*the model is 2D"):
        keraslm.predict(predictor, [str(png)], spacing=(0.1, 0.1, 0.1),
                        on_error=lambda image_id, error: None)
