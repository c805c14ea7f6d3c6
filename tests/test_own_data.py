"""Your own data: landmark files (3D Slicer markups, point lists, long CSVs), the one way to name
a dataset (`keraslm.datasets.load_dataset`), and the walk from a plain folder through the
installed commands: train -> evaluate -> predict (Slicer markups out) -> export."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from keraslm.datasets import load_dataset, make_phantom
from keraslm.errors import DatasetError, KeraslmError, LandmarkFileError
from keraslm.io import (
    LandmarkTable,
    read_image_header,
    read_landmark_file,
    read_landmarks,
    write_landmarks,
    write_markups,
)


# -- landmark files -------------------------------------------------------------------------

def test_markups_round_trip_in_lps_with_undefined_points(tmp_path):
    points = np.array([[1.5, -2.25, 3.0], [np.nan, np.nan, np.nan], [10.0, 20.0, -30.125]])
    path = tmp_path / "case.mrk.json"
    write_markups(str(path), ["sella", "nasion", "10"], points)
    names, read, units = read_landmark_file(str(path))
    assert names == ["sella", "nasion", "10"] and units == "mm"
    np.testing.assert_array_equal(read, points)
    document = json.loads(path.read_text())
    assert document["markups"][0]["coordinateSystem"] == "LPS"
    assert document["markups"][0]["controlPoints"][1]["positionStatus"] == "undefined"
    # 2D points get z = 0.
    write_markups(str(path), ["a"], np.array([[4.0, 5.0]]))
    np.testing.assert_array_equal(read_landmark_file(str(path))[1], [[4.0, 5.0, 0.0]])


def test_ras_markups_and_fcsv_are_turned_to_lps(tmp_path):
    ras = {"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
        {"label": "A", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"},
        {"label": "B", "position": [0.0, 0.0, 0.0], "positionStatus": "missing"}]}]}
    (tmp_path / "r.mrk.json").write_text(json.dumps(ras))
    names, points, _ = read_landmark_file(str(tmp_path / "r.mrk.json"))
    assert names == ["A", "B"]
    np.testing.assert_array_equal(points[0], [-1.0, -2.0, 3.0])
    assert np.all(np.isnan(points[1]))
    # Slicer 4.x .fcsv: "CoordinateSystem = 0" is RAS; LPS files stay as they are.
    header = "# Markups fiducial file version = 4.10\n# CoordinateSystem = {}\n" \
             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    row = "vtkMRMLMarkupsFiducialNode_0,1.5,-2,7,0,0,0,1,1,1,0,L1,,\n"
    (tmp_path / "old.fcsv").write_text(header.format("0") + row)
    (tmp_path / "new.fcsv").write_text(header.format("LPS") + row)
    np.testing.assert_array_equal(read_landmark_file(str(tmp_path / "old.fcsv"))[1], [[-1.5, 2.0, 7.0]])
    names, points, _ = read_landmark_file(str(tmp_path / "new.fcsv"))
    assert names == ["L1"]
    np.testing.assert_array_equal(points, [[1.5, -2.0, 7.0]])


def test_point_lists_stop_at_the_isbi_classification_lines(tmp_path):
    (tmp_path / "001.txt").write_text("835,996\n1473,1029\n1289,1279\n1\n3\n")
    names, points, units = read_landmark_file(str(tmp_path / "001.txt"))
    assert names == ["1", "2", "3"] and units is None
    np.testing.assert_array_equal(points, [[835, 996], [1473, 1029], [1289, 1279]])


@pytest.mark.parametrize("content,message", [
    ("{", "not valid JSON"),
    ('{"markups": []}', "no 'markups' list"),
    ('{"markups": [{"controlPoints": [{"label": "a", "position": [1, 2]}]}]}', "expected three numbers"),
    ('{"markups": [{"coordinateSystem": "XYZ", "controlPoints": [{"label": "a", "position": [1, 2, 3]}]}]}',
     "neither RAS nor LPS"),
    ('{"markups": [{"controlPoints": [{"label": "a", "position": [1, 2, 3]}, '
     '{"label": "a", "position": [1, 2, 3]}]}]}', "used twice: a"),
])
def test_bad_markups_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    with pytest.raises(LandmarkFileError, match=message) as error:
        read_landmark_file(str(path))
    assert str(path) in str(error.value)


def test_long_csv_layout_sorts_numeric_names_as_numbers(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("image,landmark,x,y\nb,10,1,2\nb,2,3,4\na,1,5,6\na,10,7,8\n")
    table = read_landmarks(str(path))
    assert table.ids == ("b", "a") and table.names == ("1", "2", "10")
    np.testing.assert_array_equal(table.points[0], [[np.nan, np.nan], [3, 4], [1, 2]])
    np.testing.assert_array_equal(table.points[1], [[5, 6], [np.nan, np.nan], [7, 8]])
    path.write_text("image,landmark,x,y\na,1,5,6\na,1,7,8\n")
    with pytest.raises(LandmarkFileError, match="line 3: landmark '1' of 'a' given twice"):
        read_landmarks(str(path))


# -- one way to name a dataset --------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("own") / "phantom", ndim=2, num_images=10, seed=3,
                        image_size=(64, 56))


def _flat_copy(dataset, folder):
    """The phantom's images copied into one plain folder; returns {id: (path, Image header)}."""
    os.makedirs(folder, exist_ok=True)
    copied = {}
    for record in dataset.records:
        target = os.path.join(folder, os.path.basename(record.image_path))
        if os.path.isdir(record.image_path):  # A DICOM series folder.
            shutil.copytree(record.image_path, target)
        else:
            shutil.copy(record.image_path, target)
        copied[record.id] = (target, dataset.read_image_header(record))
    return copied


def test_folder_with_one_pixel_csv_and_with_per_image_files_load_the_same_landmarks(phantom, tmp_path):
    spacing = phantom.image_spacing
    # (a) images + one CSV in pixels, id column called image_path, numbered landmarks.
    copied = _flat_copy(phantom, tmp_path / "csv")
    names = [str(k + 1) for k in range(phantom.num_landmarks)]
    index = np.stack([copied[r.id][1].physical_to_index(r.points_mm) for r in phantom.records])
    write_landmarks(str(tmp_path / "csv" / "annotations.csv"),
                    LandmarkTable([os.path.basename(copied[r.id][0]) for r in phantom.records],
                                  names, index), id_header="image_path")
    with pytest.raises(KeraslmError, match="--units index\\|mm"):
        load_dataset(str(tmp_path / "csv"), spacing=spacing)
    from_csv_folder = load_dataset(str(tmp_path / "csv"), units="index", spacing=spacing)
    # (b) images + one Slicer markups file each (mm, LPS); (c) ISBI-style point lists in pixels.
    slicer = _flat_copy(phantom, tmp_path / "slicer")
    _flat_copy(phantom, tmp_path / "txt")
    for r, row in zip(phantom.records, index):
        stem = os.path.splitext(os.path.basename(slicer[r.id][0]))[0]
        write_markups(str(tmp_path / "slicer" / f"{stem}.mrk.json"), names, r.points_mm)
        (tmp_path / "txt" / f"{stem}.txt").write_text("".join(f"{x},{y}\n" for x, y in row) + "1\n")
    from_slicer = load_dataset(str(tmp_path / "slicer"), spacing=spacing)
    from_txt = load_dataset(str(tmp_path / "txt"), units="index", spacing=spacing)
    with pytest.raises(DatasetError, match=r"slicer: a folder of images each with a landmark "
                       r"file is read from itself, but root .*txt"):
        load_dataset(str(tmp_path / "slicer"), spacing=spacing, root=str(tmp_path / "txt"))
    for loaded in (from_csv_folder, from_slicer, from_txt):
        assert loaded.landmark_names == tuple(names) and loaded.ndim == 2
        for r in phantom.records:
            np.testing.assert_allclose(loaded.record(r.id).points_mm, r.points_mm, atol=1e-6)


def test_folder_problems_are_all_named(phantom, tmp_path):
    copied = _flat_copy(phantom, tmp_path / "f")
    first, second = (copied[r.id][0] for r in phantom.records[:2])
    stem = os.path.splitext(os.path.basename(first))[0]
    write_markups(str(tmp_path / "f" / f"{stem}.mrk.json"), ["a"], np.zeros((1, 3)))
    write_markups(str(tmp_path / "f" / "ghost.mrk.json"), ["a"], np.zeros((1, 3)))
    with pytest.raises(DatasetError) as error:
        load_dataset(str(tmp_path / "f"))
    message = str(error.value)
    assert "ghost.mrk.json" in message and "landmark files without an image" in message
    assert second in message and f"{len(copied) - 1} images without a landmark file" in message
    (tmp_path / "f" / "a.csv").write_text("id,a_x,a_y\n")
    (tmp_path / "f" / "b.csv").write_text("id,a_x,a_y\n")
    with pytest.raises(KeraslmError, match="holds 2 CSV files .*a.csv.*b.csv.*name the landmark CSV"):
        load_dataset(str(tmp_path / "f"))
    with pytest.raises(KeraslmError, match="unknown dataset 'nowhere'"):
        load_dataset("nowhere")


def test_nifti_volumes_with_slicer_markups_in_ras(tmp_path):
    volumes = make_phantom(tmp_path / "p3", ndim=3, num_images=2, seed=1, image_size=(20, 24, 16))
    folder = tmp_path / "mine"
    copied = _flat_copy(volumes, folder)
    for r in volumes.records:
        stem = os.path.basename(copied[r.id][0]).split(".")[0]
        ras = r.points_mm * np.array([-1.0, -1.0, 1.0])
        points = [{"label": f"L{k}", "position": list(map(float, p))} for k, p in enumerate(ras)]
        (folder / f"{stem}.mrk.json").write_text(json.dumps(
            {"markups": [{"coordinateSystem": "RAS", "controlPoints": points}]}))
    loaded = load_dataset(str(folder))
    assert loaded.ndim == 3 and loaded.landmark_names[:3] == ("L0", "L1", "L2")
    for r in volumes.records:
        np.testing.assert_allclose(loaded.record(r.id).points_mm, r.points_mm, atol=1e-9)
        assert read_image_header(loaded.record(r.id).image_path).ndim == 3


# -- the walk through the installed commands ------------------------------------------------

# Slow (19 s): the own-data guide's examples (tests/test_docs.py, slow) walk the same commands too.
@pytest.mark.slow
def test_walkthrough_train_evaluate_predict_export_on_a_plain_folder(phantom, tmp_path, capsys):
    """README "Your own data": a folder of images + one pixel CSV, through the commands."""
    from keraslm.commands.evaluate import main as evaluate_main
    from keraslm.commands.train import main as train_main
    from keraslm.commands.export import main as export_main
    from keraslm.commands.predict import main as predict_main

    copied = _flat_copy(phantom, tmp_path / "xrays")
    index = np.stack([copied[r.id][1].physical_to_index(r.points_mm) for r in phantom.records])
    write_landmarks(str(tmp_path / "xrays" / "landmarks.csv"),
                    LandmarkTable(list(phantom.ids), phantom.landmark_names, index))
    spacing = ",".join(map(str, phantom.image_spacing))
    data = ["--dataset", str(tmp_path / "xrays"), "--units", "index", "--spacing", spacing]
    assert train_main(data + ["--architecture", "unet", "--grid-shape", "32,32", "--steps", "4",
                              "--steps-per-epoch", "2", "--batch-size", "2", "--model-option",
                              "filters=4", "--model-option", "num_levels=2", "--jit", "off",
                              "--output-dir", str(tmp_path / "run"), "--no-export"]) == 0
    out = capsys.readouterr().out
    pictures = [line.split("picture: ")[1] for line in out.splitlines() if line.startswith("picture: ")]
    assert os.path.basename(pictures[0]) == "validation_cumulative_error.png"
    assert len(pictures) >= 2 and all(os.path.isfile(p) for p in pictures)
    assert any("validation_overlay_" in p for p in pictures)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["units"] == "index" and config["image_spacing"] == list(phantom.image_spacing)
    assert evaluate_main(["--runs", str(tmp_path / "run"), "--output-dir", str(tmp_path / "eval"),
                          "--no-plots"]) == 0
    assert "points evaluated" in capsys.readouterr().out
    image = copied[phantom.records[0].id][0]
    assert predict_main([str(tmp_path / "run" / "model.keras"), image, "--spacing", spacing,
                         "--output-dir", str(tmp_path / "pred")]) == 0
    stem = phantom.records[0].id
    names, points, _ = read_landmark_file(str(tmp_path / "pred" / "markups" / f"{stem}.mrk.json"))
    table = read_landmarks(str(tmp_path / "pred" / "predictions.csv"))
    assert names == list(phantom.landmark_names)
    np.testing.assert_allclose(points[:, :2], table.points[0], atol=1e-6)
    assert export_main([str(tmp_path / "run"), str(tmp_path / "served")]) == 0
    assert (tmp_path / "served" / "1" / "saved_model.pb").exists()


# -- keraslm-dataset check / init -----------------------------------------------------------

def _csv_folder(phantom, folder, units="index"):
    """The phantom as a plain folder + one CSV; returns (copied, index points, csv path)."""
    copied = _flat_copy(phantom, folder)
    index = np.stack([copied[r.id][1].physical_to_index(r.points_mm) for r in phantom.records])
    values = index if units == "index" else np.stack([r.points_mm for r in phantom.records])
    path = os.path.join(folder, "landmarks.csv")
    write_landmarks(path, LandmarkTable(list(phantom.ids), phantom.landmark_names, values))
    return copied, index, path


def test_check_finds_each_planted_error_naming_file_and_landmark(phantom, tmp_path, capsys):
    from keraslm.commands.dataset import main as dataset_main
    from keraslm.io import read_image, write_dicom

    names = phantom.landmark_names
    folder = tmp_path / "planted"
    copied, index, csv_path = _csv_folder(phantom, folder)
    ids = list(phantom.ids)
    table = read_landmarks(csv_path)
    points = table.points.copy()
    points[0, 2] = [-40.0, 10.0]                      # outside the image
    points[1, 7] = points[1, 8]                       # two landmarks at the same place
    points[2, [0, 12]] = points[2, [12, 0]]           # two far-apart landmarks swapped
    write_landmarks(csv_path, LandmarkTable(table.ids, names, points))
    # One image re-written as DICOM with 10x the pixel spacing (mixed units).
    odd = copied[ids[3]][0]
    image = read_image(odd, spacing=phantom.image_spacing)
    os.remove(odd)
    write_dicom(str(folder / f"{ids[3]}.dcm"), dataclasses_replace(image, spacing=image.spacing * 10))
    spacing = ",".join(map(str, phantom.image_spacing))
    overview = tmp_path / "overview.png"
    status = dataset_main(["check", str(folder), "--units", "index", "--spacing", spacing,
                           "--overview", str(overview)])
    out = capsys.readouterr().out
    assert status == 1 and overview.exists()
    lines = [line for line in out.splitlines() if line.startswith(("error:", "warning:"))]

    def found(severity, path, landmark, text):
        return any(line.startswith(f"{severity}: {path}, landmark {landmark!r}") and text in line
                   for line in lines)

    assert found("error", copied[ids[0]][0], names[2], "outside the image")
    assert found("error", copied[ids[1]][0], names[7], f"same place as landmark {names[8]!r}")
    assert found("warning", copied[ids[2]][0], names[0], f"swapped with {names[12]!r}?"), "\n".join(lines)
    assert found("warning", copied[ids[2]][0], names[12], f"swapped with {names[0]!r}?"), "\n".join(lines)
    assert any(line.startswith("warning: ") and "mixed units" in line and f"{ids[3]}.dcm" in line
               for line in lines)
    # Nothing else is flagged on the clean images.
    flagged = {line.split(":")[1].split(",")[0].strip() for line in lines}
    assert flagged <= {copied[i][0] for i in ids[:3]} | {str(folder / f"{ids[3]}.dcm")}, "\n".join(lines)
    assert f"dataset 'planted': {len(ids)} 2D images" in out and "missing" in out

    # Unreadable images: every one is named (loading in index units reads every header).
    for i in ids[4:6]:
        with open(copied[i][0], "wb") as handle:
            handle.write(b"not an image")
    assert dataset_main(["check", str(folder), "--units", "index", "--spacing", spacing]) == 1
    err = capsys.readouterr().err
    assert "2 images cannot be read" in err and all(copied[i][0] in err for i in ids[4:6])
    # Images listed but absent: every one named.
    for i in ids[4:6]:
        os.remove(copied[i][0])
    assert dataset_main(["check", str(folder), "--units", "index", "--spacing", spacing]) == 1
    err = capsys.readouterr().err
    assert "2 of 10 landmark rows have no image" in err and ids[4] in err and ids[5] in err
    # Mixed dimensions: a 3D volume among 2D images is named.
    mixed = tmp_path / "mixed"
    copied2 = _flat_copy(phantom, mixed)
    for r in phantom.records[:3]:
        stem = os.path.splitext(os.path.basename(copied2[r.id][0]))[0]
        write_markups(str(mixed / f"{stem}.mrk.json"), names, r.points_mm)
    for r in phantom.records[3:]:
        os.remove(copied2[r.id][0])
    from keraslm.io import Image, write_nifti
    write_nifti(str(mixed / "vol.nii.gz"), Image(np.zeros((4, 5, 6), np.float32), spacing=(1, 1, 1)))
    write_markups(str(mixed / "vol.mrk.json"), names, np.zeros((len(names), 3)))
    assert dataset_main(["check", str(mixed), "--spacing", spacing]) == 1
    err = capsys.readouterr().err
    assert "mixes 2D images" in err and "3D images" in err and "vol.nii.gz" in err


def test_a_folder_of_landmark_files_names_every_unreadable_image(phantom, tmp_path):
    slicer = _flat_copy(phantom, tmp_path / "slicer")
    names = list(phantom.landmark_names)
    for record in phantom.records:
        stem = os.path.splitext(os.path.basename(slicer[record.id][0]))[0]
        write_markups(str(tmp_path / "slicer" / f"{stem}.mrk.json"), names, record.points_mm)
    broken = sorted(path for path, _ in slicer.values() if path.endswith(".png"))[:2]
    for path in broken:
        with open(path, "wb") as handle:
            handle.write(b"not an image")
    with pytest.raises(DatasetError, match="2 images cannot be read") as error:
        load_dataset(str(tmp_path / "slicer"), spacing=phantom.image_spacing)
    assert all(path in str(error.value) for path in broken)


def test_check_warns_of_a_file_with_other_landmark_names(phantom, tmp_path):
    """One Slicer markups file with Slicer's default labels (F-1, ...): each would be its own
    heatmap channel; check names the file."""
    from keraslm.datasets.check import check_dataset

    slicer = _flat_copy(phantom, tmp_path / "slicer")
    names = list(phantom.landmark_names)
    for number, record in enumerate(phantom.records):
        stem = os.path.splitext(os.path.basename(slicer[record.id][0]))[0]
        labels = [f"F-{k + 1}" for k in range(len(names))] if number == 2 else names
        write_markups(str(tmp_path / "slicer" / f"{stem}.mrk.json"), labels, record.points_mm)
    dataset = load_dataset(str(tmp_path / "slicer"), spacing=phantom.image_spacing)
    assert dataset.num_landmarks == 2 * len(names)
    own = [f for f in check_dataset(dataset).findings if f.kind == "own landmark names"]
    assert [f.path for f in own] == [slicer[phantom.records[2].id][0]]
    assert f"names {len(names)} landmarks that no other image has (F-1, " in own[0].message


def test_check_reports_the_storage_orientations_without_warning(phantom, tmp_path, capsys):
    """The same content stored with its rows bottom-up (as dcm2niix writes): the landmarks in
    mm agree, and training brings both into one canonical frame - the summary lists the
    orientations, no warning."""
    from keraslm.data import LandmarkDataset, Record
    from keraslm.datasets.check import check_dataset
    from keraslm.io import storage_orientation
    from keraslm.io import Image, read_image, write_nifti

    assert storage_orientation(np.eye(3)) == ("+x", "+y", "+z")
    assert storage_orientation(np.diag([-1.0, -1.0, 1.0])) == ("-x", "-y", "+z")
    assert storage_orientation(np.array([[0.0, 1.0], [1.0, 0.0]])) == ("+y", "+x")
    records = []
    for number, record in enumerate(phantom.records[:4]):
        image = phantom.read_image(record)
        if number == 3:  # Rows bottom-up: same physical content, flipped index order.
            height = image.array.shape[0]
            image = Image(image.array[::-1], spacing=image.spacing,
                          origin=image.index_to_physical([[0.0, height - 1.0]])[0],
                          direction=image.direction @ np.diag([1.0, -1.0]))
        path = str(tmp_path / f"{record.id}.nii.gz")
        write_nifti(path, image)
        np.testing.assert_allclose(read_image(path).physical_to_index(record.points_mm)[:, 0],
                                   phantom.read_image(record).physical_to_index(record.points_mm)[:, 0],
                                   atol=1e-4)
        records.append(Record(record.id, path, record.points_mm))
    dataset = LandmarkDataset("flipped", tuple(records), phantom.landmark_names, 2)
    from keraslm.datasets.check import format_check

    check = check_dataset(dataset)
    assert not check.errors  # The same points in mm, none outside.
    assert not [f for f in check.findings if "orientation" in f.kind]
    assert check.summary["orientations"] == [{"orientation": ["+x", "+y"], "images": 3},
                                             {"orientation": ["+x", "-y"], "images": 1}]
    lines = format_check(check)
    assert "  stored +x -y (index axes along LPS): 1 images" in lines
    assert any("mixed orientations are fine" in line for line in lines)
    assert "shape_check_skipped" not in check.summary and check.aligned_mm is not None
    # Two images cannot be aligned to a mean shape: said, not passed as checked.
    few = check_dataset(dataset.subset(dataset.ids[:2]))
    assert few.aligned_mm is None
    assert ("not checked: landmarks far from the others (mislabelled or swapped points) and the "
            "overview picture: 2 image(s) with at least 4 landmarks, the alignment needs 3"
            ) in format_check(few)


def test_check_reports_every_truncated_image(phantom, tmp_path, capsys):
    """A truncated PNG has a readable header: check decodes every image to find it, as training
    would, and names each one."""
    from keraslm.commands.dataset import main as dataset_main

    folder = tmp_path / "truncated"
    copied, _, csv_path = _csv_folder(phantom, folder)
    pngs = sorted(path for path, _ in copied.values() if path.endswith(".png"))[:2]
    # Two far-apart landmarks of a truncated image swapped: not reported as far from the
    # others - an unreadable image's points are not checked against the rest.
    table = read_landmarks(csv_path)
    points = table.points.copy()
    row = [copied[image_id][0] for image_id in table.ids].index(pngs[0])
    points[row, [0, 12]] = points[row, [12, 0]]
    write_landmarks(csv_path, LandmarkTable(table.ids, table.names, points))
    for path in pngs:
        with open(path, "rb") as handle:
            head = handle.read(300)
        with open(path, "wb") as handle:
            handle.write(head)
    spacing = ",".join(map(str, phantom.image_spacing))
    assert dataset_main(["check", str(folder), "--units", "index", "--spacing", spacing,
                         "--overview", str(tmp_path / "overview.png")]) == 1
    out = capsys.readouterr().out
    for path in pngs:
        assert f"error: {path}: corrupt or truncated image" in out, out
    assert f"{len(phantom)} 2D images ({len(phantom) - 2} readable)" in out
    assert "\n2 errors, " in out
    assert f"warning: {pngs[0]}" not in out and "swapped" not in out, out


def test_dataset_commands_read_headerless_csvs_with_ndim(phantom, tmp_path, capsys):
    from keraslm.commands.dataset import main as dataset_main

    folder = tmp_path / "headerless"
    _, index, csv_path = _csv_folder(phantom, folder)
    os.remove(csv_path)
    (folder / "points.csv").write_text("".join(
        ",".join([r.id] + [f"{v:.6f}" for v in points.ravel()]) + "\n"
        for r, points in zip(phantom.records, index)))
    data = ["--units", "index", "--spacing", ",".join(map(str, phantom.image_spacing))]
    overview = ["--overview", str(tmp_path / "overview.png")]
    assert dataset_main(["check", str(folder)] + data + overview) == 1
    err = capsys.readouterr().err
    assert "points.csv: headerless landmark file" in err and "--ndim 2 or 3" in err
    assert dataset_main(["check", str(folder)] + data + ["--ndim", "2"] + overview) == 0
    assert f"{len(phantom)} 2D images" in capsys.readouterr().out
    assert dataset_main([str(folder)] + data + ["--ndim", "2"]) == 0  # The summary.
    assert f"{len(phantom)} 2D images, {phantom.num_landmarks} landmarks" in capsys.readouterr().out
    assert dataset_main(["init", str(folder)] + data + ["--ndim", "2"]) == 0
    description = json.loads((folder / "dataset.json").read_text())
    assert description["landmarks_csv"] == "points.csv" and description["ndim"] == 2
    assert dataset_main(["check", str(folder)] + overview) == 0  # Now through dataset.json.
    loaded = load_dataset(str(folder))
    np.testing.assert_allclose(loaded.points_mm, phantom.points_mm, atol=1e-4)


def dataclasses_replace(image, **changes):
    import dataclasses

    return dataclasses.replace(image, **changes)


def test_init_writes_the_inferred_dataset_json(phantom, tmp_path, capsys):
    from keraslm.commands.dataset import main as dataset_main

    folder = tmp_path / "slicer"
    copied = _flat_copy(phantom, folder)
    for r in phantom.records:
        stem = os.path.splitext(os.path.basename(copied[r.id][0]))[0]
        write_markups(str(folder / f"{stem}.mrk.json"), phantom.landmark_names, r.points_mm)
    spacing = ",".join(map(str, phantom.image_spacing))
    assert dataset_main(["init", str(folder), "--spacing", spacing]) == 0
    description = json.loads((folder / "dataset.json").read_text())
    assert description["landmark_files"] == ".mrk.json" and description["landmark_units"] == "mm"
    assert description["landmark_names"] == list(phantom.landmark_names)
    loaded = load_dataset(str(folder))  # Now through dataset.json, without --spacing.
    for r in phantom.records:
        np.testing.assert_allclose(loaded.record(r.id).points_mm, r.points_mm, atol=1e-9)
    assert dataset_main(["init", str(folder)]) == 1
    assert "exists already" in capsys.readouterr().err
    # A CSV folder records its CSV and units.
    _csv_folder(phantom, tmp_path / "csv")
    assert dataset_main(["init", str(tmp_path / "csv"), "--units", "index", "--spacing", spacing]) == 0
    description = json.loads((tmp_path / "csv" / "dataset.json").read_text())
    assert description["landmarks_csv"] == "landmarks.csv" and description["landmark_units"] == "index"
    assert dataset_main(["check", str(tmp_path / "csv")]) == 0


def test_walkthrough_on_nifti_volumes_with_slicer_markups(tmp_path, capsys):
    """The same walk for 3D: NIfTI/DICOM volumes each with a .mrk.json (LPS mm) beside it."""
    from keraslm.commands.evaluate import main as evaluate_main
    from keraslm.commands.train import main as train_main
    from keraslm.commands.predict import main as predict_main

    volumes = make_phantom(tmp_path / "p3", ndim=3, num_images=5, seed=2, image_size=(20, 24, 16))
    folder = tmp_path / "volumes"
    copied = _flat_copy(volumes, folder)
    for r in volumes.records:
        stem = os.path.basename(copied[r.id][0]).split(".")[0]
        write_markups(str(folder / f"{stem}.mrk.json"), volumes.landmark_names, r.points_mm)
    assert train_main(["--dataset", str(folder), "--architecture", "unet", "--grid-shape", "16,16,16",
                       "--steps", "2", "--steps-per-epoch", "1", "--batch-size", "1",
                       "--model-option", "filters=4", "--model-option", "num_levels=2",
                       "--jit", "off", "--test-fraction", "0.4", "--output-dir", str(tmp_path / "run"),
                       "--no-export"]) == 0
    assert "validation_overlay_" in capsys.readouterr().out
    assert evaluate_main(["--runs", str(tmp_path / "run"), "--output-dir", str(tmp_path / "eval"),
                          "--no-plots"]) == 0
    volume = copied[volumes.records[0].id][0]
    assert predict_main([str(tmp_path / "run" / "model.keras"), volume, "--output-dir",
                         str(tmp_path / "pred")]) == 0
    markups = list((tmp_path / "pred" / "markups").glob("*.mrk.json"))
    assert len(markups) == 1
    names, points, _ = read_landmark_file(str(markups[0]))
    np.testing.assert_allclose(points, read_landmarks(str(tmp_path / "pred" / "predictions.csv")).points[0],
                               atol=1e-6)


def test_spacing_and_units_that_would_be_ignored_are_refused(phantom, tmp_path):
    """--spacing for a dataset whose images all store their own (DICOM, NIfTI) and --units index
    for Slicer markups (mm) would be ignored without a word: refused, naming the folder."""
    from keraslm.errors import DatasetArgumentError

    folder = tmp_path / "markups"
    copied = _flat_copy(phantom, folder)
    for r in phantom.records:
        stem = os.path.splitext(os.path.basename(copied[r.id][0]))[0]
        write_markups(str(folder / f"{stem}.mrk.json"), phantom.landmark_names, r.points_mm)
    spacing = phantom.image_spacing
    with pytest.raises(DatasetArgumentError, match=r"markups: units 'index' were given .* 3D "
                       r"Slicer markups file, in mm"):
        load_dataset(str(folder), units="index", spacing=spacing)
    load_dataset(str(folder), units="mm", spacing=spacing)  # mm agrees with the markups.
    stored = [path for path, _ in copied.values() if path.endswith(".dcm")]
    assert stored and len(stored) < len(copied)  # The phantom mixes PNG and DICOM.
    only_dicom = tmp_path / "dicom"
    only_dicom.mkdir()
    for path in stored:
        shutil.copy(path, only_dicom)
        stem = os.path.splitext(os.path.basename(path))[0]
        shutil.copy(folder / f"{stem}.mrk.json", only_dicom)
    assert len(load_dataset(str(only_dicom))) == len(stored)
    with pytest.raises(DatasetArgumentError, match=r"dicom: a pixel spacing was given .* every "
                       r"image stores its own .*leave it out"):
        load_dataset(str(only_dicom), spacing=spacing)


# -- the edge cases of a review of own-data folders --------------------------------------------

def _dicom_folder(folder, spacing_tag=True, count=3):
    """`count` 2D DICOMs (40 x 30 pixels of 0.2 mm, or without any spacing tag) with a .txt
    point list each in pixel indices; returns the index points per image."""
    import pydicom

    from keraslm.io import Image, write_dicom

    os.makedirs(folder, exist_ok=True)
    points = {}
    for n in range(count):
        path = os.path.join(folder, f"case{n}.dcm")
        write_dicom(path, Image(np.random.default_rng(n).random((30, 40)).astype(np.float32),
                                spacing=0.2))
        if not spacing_tag:
            ds = pydicom.dcmread(path)
            del ds.PixelSpacing
            ds.save_as(path)
        points[f"case{n}"] = np.array([[5.0 + n, 6.0], [20.0, 10.0 + n]])
        with open(os.path.join(folder, f"case{n}.txt"), "w") as handle:
            handle.write("\n".join(f"{x},{y}" for x, y in points[f"case{n}"]) + "\n")
    return points


def test_dicom_without_spacing_needs_and_takes_the_given_spacing(tmp_path):
    """A DICOM without PixelSpacing was read at 1 mm silently (and --spacing refused as if it
    stored one): the spacing is required and used, in the landmarks and the images read."""
    from keraslm.errors import DatasetArgumentError, MissingSpacingError

    points = _dicom_folder(tmp_path / "bare", spacing_tag=False)
    with pytest.raises(MissingSpacingError, match=r"bare: 3 of 3 images store no pixel spacing"):
        load_dataset(str(tmp_path / "bare"), units="index")
    dataset = load_dataset(str(tmp_path / "bare"), units="index", spacing=0.15)
    np.testing.assert_allclose(dataset.record("case1").points_mm, points["case1"] * 0.15)
    image = dataset.read_image(dataset.record("case1"))
    np.testing.assert_allclose(image.spacing, [0.15, 0.15])
    np.testing.assert_allclose(dataset.read_image_header(dataset.record("case1")).spacing, 0.15)
    # DICOMs that store their spacing: the stored one, and a --spacing for them is refused.
    stored = _dicom_folder(tmp_path / "stored")
    np.testing.assert_allclose(load_dataset(str(tmp_path / "stored"), units="index")
                               .record("case2").points_mm, stored["case2"] * 0.2)
    with pytest.raises(DatasetArgumentError, match=r"stored: a pixel spacing was given"):
        load_dataset(str(tmp_path / "stored"), units="index", spacing=0.15)
    # The same through a CSV in pixels.
    (tmp_path / "bare" / "landmarks.csv").write_text(
        "id,a_x,a_y,b_x,b_y\n" + "".join(f"{k},{p[0, 0]},{p[0, 1]},{p[1, 0]},{p[1, 1]}\n"
                                          for k, p in points.items()))
    csv = str(tmp_path / "bare" / "landmarks.csv")
    with pytest.raises(MissingSpacingError, match=r"landmarks.csv: 3 of 3 images store no"):
        load_dataset(csv, units="index")
    np.testing.assert_allclose(load_dataset(csv, units="index", spacing=0.15)
                               .record("case0").points_mm, points["case0"] * 0.15)


def test_point_lists_skip_blank_lines_and_comments_and_refuse_what_they_cannot_read(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("1,2\n\n3,4  # checked\n# a comment\n5 6\n")
    names, points, units = read_landmark_file(str(path))
    assert names == ["1", "2", "3"] and units is None
    np.testing.assert_array_equal(np.stack(points), [[1, 2], [3, 4], [5, 6]])
    # ISBI 2015's files: trailing classification numbers after the points end the list.
    path.write_text("1,2\n3,4\n1\n3\n")
    assert read_landmark_file(str(path))[0] == ["1", "2"]
    path.write_text("1,2\nabc\n3,4\n")
    with pytest.raises(LandmarkFileError, match=r"a.txt: line 3 is a point after line 2 'abc'"):
        read_landmark_file(str(path))
    # Three values per point for a 2D image (number, x, y) are refused, not cut to (number, x).
    points = _dicom_folder(tmp_path / "numbered")
    with open(tmp_path / "numbered" / "case0.txt", "w") as handle:
        handle.write("".join(f"{n + 1} {x} {y}\n" for n, (x, y) in enumerate(points["case0"])))
    with pytest.raises(DatasetError, match=r"case0.txt: 3 values per point for the 2D image"):
        load_dataset(str(tmp_path / "numbered"), units="index")


def test_markups_other_than_point_lists_are_not_landmarks(tmp_path):
    path = tmp_path / "case.mrk.json"
    write_markups(str(path), ["L1", "L2"], np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]))
    document = json.loads(path.read_text())
    ruler = dict(document["markups"][0], type="Line")
    ruler["controlPoints"] = [dict(point, label=f"ruler-{n}") for n, point
                              in enumerate(ruler["controlPoints"], 1)]
    document["markups"].append(ruler)
    path.write_text(json.dumps(document))
    assert read_landmark_file(str(path))[0] == ["L1", "L2"]
    document["markups"] = [ruler]
    path.write_text(json.dumps(document))
    with pytest.raises(LandmarkFileError, match=r"no point list among its markups \(Line\)"):
        read_landmark_file(str(path))


def test_nifti_spatial_units_are_turned_into_mm(tmp_path):
    import nibabel as nib

    from keraslm.io import read_image

    for unit, scale in (("micron", 0.001), ("meter", 1000.0), ("mm", 1.0)):
        nifti = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([500.0, 500.0, 1000.0, 1]))
        nifti.header.set_xyzt_units(unit)
        path = str(tmp_path / f"{unit}.nii.gz")
        nib.save(nifti, path)
        np.testing.assert_allclose(read_image(path).spacing, np.array([500, 500, 1000]) * scale)


def test_image_ids_naming_two_images_and_2d_landmarks_of_3d_images_are_refused(tmp_path):
    from keraslm.io import Image, write_image

    folder = tmp_path / "ambiguous"
    folder.mkdir()
    for name in ("img1.png", "img1.jpg"):
        write_image(str(folder / name), Image(np.zeros((8, 8), np.float32), spacing=1.0))
    (folder / "landmarks.csv").write_text("id,a_x,a_y\nimg1,1,2\n")
    with pytest.raises(DatasetError, match=r"image id 'img1' names 2 images \(.*img1.jpg, "
                       r".*img1.png\)"):
        load_dataset(str(folder / "landmarks.csv"), units="index", spacing=0.1)
    (folder / "img1.txt").write_text("1,2\n")
    (folder / "landmarks.csv").unlink()
    with pytest.raises(DatasetError, match=r"two images share the name 'img1'"):
        load_dataset(str(folder), units="index", spacing=0.1)
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    write_image(str(volumes / "v.nii.gz"), Image(np.zeros((6, 7, 8), np.float32), spacing=1.0))
    (volumes / "landmarks.csv").write_text("id,a_x,a_y\nv,1,2\n")
    with pytest.raises(DatasetError, match=r"row 'v' has 2D landmarks but its image .*v.nii.gz "
                       r"is 3D"):
        load_dataset(str(volumes / "landmarks.csv"), units="mm")


def test_dataset_command_refuses_what_it_would_ignore_and_names_bad_files(tmp_path, capsys):
    from keraslm.commands.dataset import main as dataset_main

    for argv, message in ((["phantom2d", "--units", "index"], "--units: a phantom's units"),
                          (["phantom2d", "--ndim", "3"], "--ndim 3: phantom2d is 2D"),
                          ([str(tmp_path), "--seed", "5"], "--seed generate a phantom"),
                          (["init", str(tmp_path / "x.csv")], "not a folder; init describes")):
        with pytest.raises(SystemExit) as stop:
            dataset_main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png at all")
    (folder / "landmarks.csv").write_text("id,p_x,p_y\na,1,2\n")
    assert dataset_main([str(folder), "--units", "mm", "--spacing", "0.1"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "a.png" in error and "Traceback" not in error


def test_init_keeps_the_units_of_point_lists_beside_markups(tmp_path):
    """A folder of Slicer markups (mm) and .txt point lists (pixels): dataset.json records the
    point lists' units, so reading it gives the same landmarks as before."""
    from keraslm.commands.dataset import main as dataset_main

    points = _dicom_folder(tmp_path / "mixed")
    for n in (0, 1):  # Two of three as markups, in mm.
        os.remove(tmp_path / "mixed" / f"case{n}.txt")
        write_markups(str(tmp_path / "mixed" / f"case{n}.mrk.json"), ["1", "2"],
                      np.c_[points[f"case{n}"] * 0.2, np.zeros(2)])
    before = load_dataset(str(tmp_path / "mixed"), units="index")
    assert dataset_main(["init", str(tmp_path / "mixed"), "--units", "index"]) == 0
    assert json.loads((tmp_path / "mixed" / "dataset.json").read_text())["landmark_units"] == "index"
    after = load_dataset(str(tmp_path / "mixed"))
    np.testing.assert_allclose(after.points_mm, before.points_mm)
    np.testing.assert_allclose(after.record("case2").points_mm, points["case2"] * 0.2)


def test_markups_of_a_coronal_radiograph_are_taken_into_its_plane(tmp_path):
    """A 2D DICOM in a coronal plane (ImageOrientationPatient 1,0,0,0,0,-1, as AP chest X-rays
    store it): Slicer's 3D LPS points are projected into the image's 2D space (their y became
    0 before: every landmark on the first row), points off the plane are refused, and the
    predicted markups go back onto the plane."""
    import pydicom

    from keraslm.io import Image, write_dicom
    from keraslm.io import image_plane_lps
    from keraslm.io.plane import image_2d_to_lps, lps_to_image_2d
    from keraslm.prediction import Prediction, write_predictions

    folder = tmp_path / "coronal"
    folder.mkdir()
    index = {"a": np.array([[10.0, 20.0], [60.0, 30.0]]), "b": np.array([[40.0, 5.0], [5.0, 44.0]])}
    origin, axes = np.array([-30.0, 12.0, 50.0]), np.array([[1.0, 0.0], [0.0, 0.0], [0.0, -1.0]])
    for image_id, points in index.items():
        path = str(folder / f"{image_id}.dcm")
        write_dicom(path, Image(np.zeros((50, 70), np.float32), spacing=0.5))
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = origin.tolist()
        ds.save_as(path)
        lps = origin + (points * 0.5) @ axes.T  # Where Slicer shows these pixels.
        write_markups(str(folder / f"{image_id}.mrk.json"), ["p", "q"], lps)
    dataset = load_dataset(str(folder))
    for image_id, points in index.items():
        record = dataset.record(image_id)
        header = dataset.read_image_header(record)
        np.testing.assert_allclose(header.physical_to_index(record.points_mm), points, atol=1e-9)
    plane = image_plane_lps(str(folder / "a.dcm"))
    header = dataset.read_image_header(dataset.record("a"))
    lps = image_2d_to_lps(dataset.record("a").points_mm, plane, header)
    np.testing.assert_allclose(lps, origin + (index["a"] * 0.5) @ axes.T, atol=1e-9)
    np.testing.assert_allclose(lps_to_image_2d(lps, plane, header)[0], dataset.record("a").points_mm)
    # keraslm-predict's markups of such an image lie on its plane.
    prediction = Prediction("a", str(folder / "a.dcm"), ("p", "q"), dataset.record("a").points_mm,
                            index["a"], np.ones(2))
    write_predictions(str(tmp_path / "out"), [prediction])
    names, points, _ = read_landmark_file(str(tmp_path / "out" / "markups" / "a.mrk.json"))
    np.testing.assert_allclose(points, lps, atol=1e-6)
    # A point 5 mm in front of the plane: placed on another image.
    write_markups(str(folder / "b.mrk.json"), ["p", "q"],
                  origin + (index["b"] * 0.5) @ axes.T + [0.0, 5.0, 0.0])
    with pytest.raises(DatasetError, match=r"b.mrk.json: 2 point\(s\) lie off the plane of the 2D "
                       r"image .*b.dcm \(p 5.0 mm, q 5.0 mm"):
        load_dataset(str(folder))


def test_csv_quirks_are_named(tmp_path):
    """Semicolon / tab CSVs, Excel's sep= line, a landmark named twice and two rows of one
    image: errors that say so (they were 'headerless file ... --ndim' or named no file)."""
    from keraslm.io import Image, write_image

    for name, text, message in (
            ("semi.csv", "id;a_x;a_y\nimg1;1;2\n", "separated by semicolons"),
            ("tab.csv", "id\ta_x\ta_y\nimg1\t1\t2\n", "separated by tabs"),
            ("sep.csv", "sep=,\nid,a_x,a_y\nimg1,1,2\n", "Excel's separator hint"),
            ("twice.csv", "id,a_x,a_y,a_x,a_y\nimg1,1,2,3,4\n", "names landmark 'a' twice"),
            ("half.csv", "id,a_x,a_y,b_x,b_y\nimg1,1,,3,4\n",
             "line 2: landmark 'a' has only some of its 2 coordinates")):
        (tmp_path / name).write_text(text)
        with pytest.raises(LandmarkFileError, match=f"{name}.*{re.escape(message)}"):
            read_landmarks(str(tmp_path / name))
    write_image(str(tmp_path / "img1.png"), Image(np.zeros((8, 8), np.float32), spacing=1.0))
    (tmp_path / "rows.csv").write_text("id,a_x,a_y\nimg1,1,2\nimg1.png,1,2\n")
    with pytest.raises(DatasetError, match=r"rows.csv: rows name the same image more than "
                       r"once: img1, img1.png"):
        load_dataset(str(tmp_path / "rows.csv"), units="index", spacing=0.1)


def test_fcsv_with_a_bom_and_quoted_labels(tmp_path):
    path = tmp_path / "case.fcsv"
    path.write_text("\ufeff# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
                    "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                    'vtkMRMLMarkupsFiducialNode_0,1,2,3,0,0,0,1,1,1,0,"sella, turcica",,\n'
                    "vtkMRMLMarkupsFiducialNode_1,4,5,6,0,0,0,1,1,1,0,nasion,,\n", encoding="utf-8")
    names, points, units = read_landmark_file(str(path))
    assert names == ["sella, turcica", "nasion"] and units == "mm"
    np.testing.assert_array_equal(np.stack(points), [[1, 2, 3], [4, 5, 6]])
