"""Tests of keraslm.evaluation and evaluate.py: metrics against hand-computed values, reports,
plots, a tiny trained phantom model evaluated on its held-out split and pooled over two runs,
and bad input."""
import dataclasses
import importlib.util
import json
import os
import re
import shutil

import numpy as np
import pytest

from keraslm import KeraslmError
from keraslm.data import LandmarkDataset, Record
from keraslm.evaluation import (
    Evaluation,
    evaluate_model,
    evaluate_predictions,
    evaluate_runs,
    per_landmark,
    point_errors,
    pool,
    run_test_set,
    summarize,
    table1_row,
    write_report,
)
from keraslm.evaluation.plots import plot_overlay
from keraslm.evaluation.sources import check_model_matches
from keraslm.prediction import load_detector
from keraslm.io import Image, LandmarkTable, read_landmarks, write_landmarks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = np.nan


def _evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", os.path.join(REPO, "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ metrics

# Two images, three 2D landmarks. Errors: image a: 5, 1, missing ground truth;
# image b: 12, 0.5, 3 (all hand-computed from 3-4-5 and axis-aligned offsets).
TRUTH = np.array([[[0, 0], [10, 0], [NAN, NAN]], [[0, 0], [0, 10], [5, 5]]], dtype=float)
PREDICTED = np.array([[[3, 4], [10, 1], [7, 7]], [[0, 12], [0.5, 10], [5, 8]]], dtype=float)


def test_point_errors_and_summary_match_hand_computed_values():
    errors = point_errors(PREDICTED, TRUTH, ids=["a", "b"], landmark_names=["p", "q", "r"])
    np.testing.assert_allclose(errors.errors_mm, [[5, 1, NAN], [12, 0.5, 3]])
    summary = summarize(errors)
    valid = np.array([5, 1, 12, 0.5, 3])
    assert summary["count"] == 5 and summary["missing_ground_truth"] == 1  # Counted, not 0.
    assert summary["missing_predictions"] == 0 and summary["num_images"] == 2
    assert summary["median_mm"] == pytest.approx(3.0)
    assert summary["mean_mm"] == pytest.approx(21.5 / 5)
    assert summary["std_mm"] == pytest.approx(np.sqrt(np.mean((valid - 4.3) ** 2)))
    assert summary["max_mm"] == 12.0
    assert summary["outliers"] == 1 and summary["outlier_percent"] == pytest.approx(20.0)
    # SDR: error <= r; outliers: error > r.
    assert summary["sdr_2.0mm_percent"] == pytest.approx(40.0)
    assert summary["sdr_2.5mm_percent"] == pytest.approx(40.0)
    assert summary["sdr_3.0mm_percent"] == pytest.approx(60.0)
    assert summary["sdr_4.0mm_percent"] == pytest.approx(60.0)
    assert (summary["outliers_2.0mm"], summary["outliers_4.0mm"], summary["outliers_10.0mm"]) == (3, 2, 1)
    assert summary["outliers_4.0mm_percent"] == pytest.approx(40.0)
    assert [round(m, 6) for m in errors.image_mean_mm()] == [3.0, round(15.5 / 3, 6)]
    assert errors.worst_images(5) == [1, 0]


def test_summary_of_array_keeps_the_training_keys_and_counts_missing():
    summary = summarize(np.array([[1.0, NAN], [3.0, 20.0]]))
    for key in ("count", "median_mm", "mean_mm", "std_mm", "outliers", "outlier_percent",
                "sdr_2.0mm_percent", "sdr_2.5mm_percent", "sdr_3.0mm_percent", "sdr_4.0mm_percent",
                "missing_ground_truth"):
        assert key in summary
    assert summary["count"] == 3 and summary["missing_ground_truth"] == 1
    assert summary["mean_mm"] == pytest.approx(8.0)
    empty = summarize(np.full((2, 2), NAN))
    assert empty["count"] == 0 and empty["median_mm"] is None and empty["missing_ground_truth"] == 4


def test_an_error_equal_to_a_radius_counts_within_it():
    """Pixel annotations 30 and 40 pixels apart at 0.1 mm: 3.0000000000000036 mm and
    4.000000000000001 mm in floating point were counted outside SDR 3 / 4 mm."""
    truth = np.zeros((3, 1, 2))
    truth[:, 0, 0] = np.array([4, 1, 1]) * 0.1  # Pixel positions in mm, as a dataset reads them.
    predicted = truth.copy()
    predicted[:, 0, 0] = np.array([4 + 30, 1 + 40, 1 + 100]) * 0.1
    errors = point_errors(predicted, truth)
    raw = errors.errors_mm[:, 0]
    assert raw[0] > 3.0 and raw[1] > 4.0 and raw[2] > 10.0  # Rounded above the radii.
    summary = summarize(errors, outlier_radii=(4.0, 10.0))
    assert summary["sdr_3.0mm_percent"] == pytest.approx(100 / 3)
    assert summary["sdr_4.0mm_percent"] == pytest.approx(200 / 3)
    assert summary["outliers"] == 0 and summary["outliers_10.0mm"] == 0
    assert summary["outliers_4.0mm"] == 1
    assert summarize(errors.errors_mm + 1e-6)["outliers"] == 1  # A real excess counts.
    [row] = per_landmark(errors, sdr_radius=3.0)
    assert row["sdr_3.0mm_percent"] == pytest.approx(100 / 3) and row["outliers"] == 0


def test_missing_prediction_is_excluded_and_counted():
    predicted = PREDICTED.copy()
    predicted[1, 0] = NAN
    summary = summarize(point_errors(predicted, TRUTH))
    assert summary["count"] == 4 and summary["missing_predictions"] == 1
    assert summary["missing_ground_truth"] == 1 and summary["outliers"] == 0


def test_normalisation_by_reference_distance():
    truth = np.zeros((2, 6, 2))
    truth[:, :, 0] = np.arange(6)  # Landmarks on the x axis: |gt[1] - gt[5]| = 4 mm.
    truth[1] *= 2.0  # Second image: 8 mm.
    predicted = truth + np.array([0.0, 1.0])  # 1 mm off everywhere.
    errors = point_errors(predicted, truth, normalize_distance=50, normalize_landmarks=(1, 5))
    np.testing.assert_allclose(errors.errors_mm[0], 12.5)
    np.testing.assert_allclose(errors.errors_mm[1], 6.25)
    assert errors.normalization == {"distance_mm": 50.0, "landmarks": [1, 5]}
    truth[1, 5] = NAN  # No reference distance: the whole image is excluded and counted.
    summary = summarize(point_errors(predicted, truth, normalize_distance=50))
    assert summary["count"] == 6 and summary["missing_reference"] == 1
    assert summary["mean_mm"] == pytest.approx(12.5)
    with pytest.raises(KeraslmError, match=r"normalize_landmarks=\(1, 9\)"):
        point_errors(predicted, truth, normalize_distance=50, normalize_landmarks=(1, 9))
    with pytest.raises(KeraslmError, match=r"normalize_distance=-1"):
        point_errors(predicted, truth, normalize_distance=-1)


def test_pool_concatenates_folds_and_per_landmark_table():
    first = point_errors(PREDICTED[:1], TRUTH[:1], ids=["a"])
    second = point_errors(PREDICTED[1:], TRUTH[1:], ids=["b"])
    pooled = pool([first, second])
    assert pooled.ids == ("a", "b")
    assert summarize(pooled) == summarize(point_errors(PREDICTED, TRUTH, ids=["a", "b"]))
    rows = per_landmark(pooled)
    assert [row["count"] for row in rows] == [2, 2, 1] and rows[2]["missing"] == 1
    assert rows[0]["mean_mm"] == pytest.approx(8.5) and rows[0]["max_mm"] == 12.0
    assert rows[0]["std_mm"] == pytest.approx(3.5) and rows[0]["median_mm"] == pytest.approx(8.5)
    assert rows[1]["sdr_2.0mm_percent"] == 100.0 and rows[0]["outliers"] == 1
    other = point_errors(PREDICTED[1:], TRUTH[1:], landmark_names=["x", "y", "z"])
    with pytest.raises(KeraslmError, match="cannot pool part 1"):
        pool([first, other])


def test_point_errors_rejects_mismatched_shapes():
    with pytest.raises(KeraslmError, match=r"number of landmarks.*\(2, 2, 2\).*\(2, 3, 2\)"):
        point_errors(PREDICTED[:, :2], TRUTH)
    with pytest.raises(KeraslmError, match=r"coordinates per point"):
        point_errors(np.zeros((2, 3, 3)), TRUTH)


# ------------------------------------------------------------------ CSV input, report, plots


def _write_csvs(folder, layout="headerless"):
    truth = LandmarkTable(["a", "b"], ["p", "q", "r"], TRUTH)
    predicted = LandmarkTable(["b", "a"], ["p", "q", "r"], PREDICTED[::-1])  # Order differs.
    write_landmarks(folder / "truth.csv", truth, layout="named")
    write_landmarks(folder / "pred.csv", predicted, layout=layout)
    return str(folder / "pred.csv"), str(folder / "truth.csv")


def test_evaluate_predictions_matches_ids_and_writes_report(tmp_path):
    predictions, truth = _write_csvs(tmp_path)
    result = evaluate_predictions(predictions, truth, ndim=2, method="mine")
    np.testing.assert_allclose(result.errors.errors_mm, [[5, 1, NAN], [12, 0.5, 3]])
    written = write_report(tmp_path / "out", result)
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["cumulative_error.png", "landmark_errors.png", "metrics.json",
                     "predictions.csv", "predictions_named.csv", "report.md"]  # No images: no overlays.
    back = read_landmarks(tmp_path / "out" / "predictions.csv", ndim=2)
    assert back.ids == ("a", "b") and np.allclose(back.points, PREDICTED)
    assert read_landmarks(tmp_path / "out" / "predictions_named.csv").names == ("p", "q", "r")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| mine | 3.00 | 4.30 +- " in report and "| 1 (20.00 %) |" in report
    assert table1_row(result.summary(), "mine") in report
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["summary"]["missing_ground_truth"] == 1
    assert metrics["per_image"][0]["errors_mm"] == [5.0, 1.0, None]
    # The same folder again without plots: the earlier report's plots (and worst images) go,
    # other files stay.
    (tmp_path / "out" / "worst_1_old.png").write_bytes(b"old")
    (tmp_path / "out" / "reliability.png").write_bytes(b"old")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    write_report(tmp_path / "out", result, plots=False)
    assert sorted(os.listdir(tmp_path / "out")) == [
        "metrics.json", "notes.txt", "predictions.csv", "predictions_named.csv", "report.md"]


def test_landmarks_are_matched_by_name(tmp_path, trained_2d):
    """Named landmarks in another column order (a long CSV sorted by landmark) are matched by
    name, in CSV comparisons and against a model; different names are an error naming them."""
    truth = LandmarkTable(["a", "b"], ["p", "q", "r"], TRUTH)
    write_landmarks(tmp_path / "truth.csv", truth, layout="named")
    shuffled = LandmarkTable(["a", "b"], ["r", "p", "q"], PREDICTED[:, [2, 0, 1]])
    write_landmarks(tmp_path / "shuffled.csv", shuffled, layout="named")
    result = evaluate_predictions(str(tmp_path / "shuffled.csv"), str(tmp_path / "truth.csv"))
    np.testing.assert_allclose(result.errors.errors_mm, [[5, 1, NAN], [12, 0.5, 3]])
    renamed = LandmarkTable(["a", "b"], ["p", "q", "F-3"], PREDICTED)
    write_landmarks(tmp_path / "renamed.csv", renamed, layout="named")
    with pytest.raises(KeraslmError, match=r"renamed.csv and .*truth.csv name their landmarks "
                       r"differently .*only in .*renamed.csv: F-3; only in .*truth.csv: r"):
        evaluate_predictions(str(tmp_path / "renamed.csv"), str(tmp_path / "truth.csv"))
    # Against a model: the dataset's landmarks reversed give the same errors per landmark.
    result, dataset = trained_2d
    test_set = dataset.subset(dataset.ids[:2])
    order = list(range(dataset.num_landmarks))[::-1]
    reversed_set = dataclasses.replace(
        test_set, landmark_names=tuple(test_set.landmark_names[i] for i in order),
        records=tuple(dataclasses.replace(r, points_mm=r.points_mm[order]) for r in test_set.records))
    straight = evaluate_model(result.model_path, test_set)
    turned = evaluate_model(result.model_path, reversed_set)
    np.testing.assert_allclose(turned.errors.errors_mm, straight.errors.errors_mm)
    assert turned.landmark_names == straight.landmark_names


def test_evaluate_predictions_of_a_ground_truth_subset(tmp_path, capsys):
    predictions, truth = _write_csvs(tmp_path)
    write_landmarks(tmp_path / "only_b.csv", LandmarkTable(["b"], ["p", "q", "r"], PREDICTED[1:]))
    with pytest.raises(KeraslmError, match=r"different ids; ids only in .*truth.csv: a"):
        evaluate_predictions(tmp_path / "only_b.csv", truth)
    result = evaluate_predictions(tmp_path / "only_b.csv", truth, ground_truth_subset=True)
    assert result.ids == ("b",) and result.sources[0]["ground_truth_rows_left_out"] == 1
    np.testing.assert_allclose(result.errors.errors_mm, [[12, 0.5, 3]])
    full = evaluate_predictions(predictions, truth, ndim=2, ground_truth_subset=True)
    assert full.sources[0]["ground_truth_rows_left_out"] == 0 and len(full.ids) == 2
    write_landmarks(tmp_path / "extra.csv", LandmarkTable(["b", "z"], ["p", "q", "r"], PREDICTED))
    with pytest.raises(KeraslmError, match=r"ids only in .*extra.csv: z"):
        evaluate_predictions(tmp_path / "extra.csv", truth, ground_truth_subset=True)
    script = _evaluate_script()
    arguments = ["--predictions", str(tmp_path / "only_b.csv"), "--ground-truth", truth,
                 "--output-dir", str(tmp_path / "out"), "--no-plots"]
    assert script.main(arguments) == 2
    assert "different ids" in capsys.readouterr().err
    assert script.main(arguments + ["--ground-truth-subset"]) == 0
    assert "truth.csv: 1 image without a prediction left out" in capsys.readouterr().out
    # The report is written as a set: a folder where one of its files goes fails before any
    # file is replaced (the earlier report stays whole); named, not a traceback.
    report = (tmp_path / "out" / "report.md").read_text()
    written = (tmp_path / "out" / "predictions_named.csv").read_text()
    (tmp_path / "out" / "metrics.json").unlink()
    (tmp_path / "out" / "metrics.json").mkdir()
    assert script.main(["--predictions", predictions, "--ground-truth", truth, "--ndim", "2",
                        "--output-dir", str(tmp_path / "out"), "--no-plots"]) == 2
    assert "metrics.json is a folder; the report writes a file of that name" in (
        capsys.readouterr().err)
    assert (tmp_path / "out" / "report.md").read_text() == report
    assert (tmp_path / "out" / "predictions_named.csv").read_text() == written
    assert not [name for name in os.listdir(tmp_path / "out") if name.startswith(".")]
    # A predictions file the report would replace (keraslm-predict's predictions.csv in the
    # same folder) is refused; --dataset typed with its default value is a ground truth.
    (tmp_path / "out" / "metrics.json").rmdir()
    for name in ("predictions.csv", "predictions_named.csv"):
        with pytest.raises(SystemExit):
            script.main(["--predictions", str(tmp_path / "out" / name), "--ground-truth", truth,
                         "--output-dir", str(tmp_path / "out")])
        assert "is a file the report writes into --output-dir" in capsys.readouterr().err
    assert (tmp_path / "out" / "predictions_named.csv").read_text() == written
    assert script.parse_args(["--predictions", "p.csv", "--dataset", "phantom2d"]).dataset == "phantom2d"
    with pytest.raises(SystemExit):
        script.main(["--runs", "r", "--ground-truth-subset"])
    assert "--ground-truth-subset goes with --predictions" in capsys.readouterr().err


def test_pooled_runs_of_the_same_name_keep_their_ids_apart():
    """Runs seed1/run and seed2/run pooled: their images were both labelled run/<id> and the
    pooling failed on duplicate ids after every prediction had run."""
    from keraslm.evaluation.sources import _unique_labels

    assert _unique_labels(["runs/fold0", "runs/fold1"]) == ["fold0", "fold1"]
    assert _unique_labels(["a/seed1/run", "a/seed2/run/"]) == ["seed1/run", "seed2/run"]
    assert _unique_labels(["x/run", "x/run"]) == ["run#1", "run#2"]


def test_evaluate_predictions_bad_input(tmp_path):
    predictions, truth = _write_csvs(tmp_path)
    table = read_landmarks(truth)
    write_landmarks(tmp_path / "other.csv", LandmarkTable(["a", "c", "d"], table.names, np.zeros((3, 3, 2))))
    with pytest.raises(KeraslmError, match=r"different ids; ids only in .*other.csv: c, d; ids only in .*truth.csv: b"):
        evaluate_predictions(tmp_path / "other.csv", truth)
    write_landmarks(tmp_path / "two.csv", LandmarkTable(["a", "b"], ["p", "q"], np.zeros((2, 2, 2))))
    with pytest.raises(KeraslmError, match=r"two.csv has 2 landmarks per row but .*truth.csv has 3"):
        evaluate_predictions(tmp_path / "two.csv", truth)
    write_landmarks(tmp_path / "three_d.csv", LandmarkTable(["a", "b"], ["p", "q", "r"], np.zeros((2, 3, 3))))
    with pytest.raises(KeraslmError, match=r"three_d.csv holds 3D landmarks but .*truth.csv holds 2D"):
        evaluate_predictions(tmp_path / "three_d.csv", truth)
    with pytest.raises(KeraslmError, match=r"pred.csv: headerless landmark file .* pass ndim="):
        evaluate_predictions(predictions, truth)
    with pytest.raises(KeraslmError, match=r"absent.csv: no such file"):
        evaluate_predictions(tmp_path / "absent.csv", truth)
    (tmp_path / "markups").mkdir()
    with pytest.raises(KeraslmError, match=r"markups: a folder, not a landmark CSV file"):
        evaluate_predictions(predictions, tmp_path / "markups", ndim=2)
    (tmp_path / "predictions.json").write_text("{}")
    with pytest.raises(KeraslmError, match=r"predictions.json: a .json file, not a landmark CSV"):
        evaluate_predictions(tmp_path / "predictions.json", truth)


def test_evaluate_predictions_matches_ids_naming_the_same_image(phantom2d_root, tmp_path, capsys):
    # keraslm-predict names images by file stem; a dataset's CSV by relative path and extension.
    truth_csv = str(phantom2d_root / "landmarks.csv")
    truth = read_landmarks(truth_csv)
    assert truth.ids[10] == "images/phantom2d_010.png"
    stems = ["phantom2d_008", "phantom2d_010"]
    write_landmarks(tmp_path / "stems.csv", LandmarkTable(
        stems, truth.names, np.stack([truth.points_of(f"images/{s}.png") for s in stems]) + 3.0))
    result = evaluate_predictions(tmp_path / "stems.csv", truth_csv, ground_truth_subset=True)
    assert result.ids == ("images/phantom2d_008.png", "images/phantom2d_010.png")
    np.testing.assert_allclose(result.errors.errors_mm, np.hypot(3.0, 3.0))
    assert result.sources[0]["ground_truth_rows_left_out"] == 10
    script = _evaluate_script()
    assert script.main(["--predictions", str(tmp_path / "stems.csv"), "--ground-truth", truth_csv,
                        "--ground-truth-subset", "--output-dir", str(tmp_path / "out"),
                        "--no-plots"]) == 0
    assert "10 images without a prediction left out" in capsys.readouterr().out
    # A landmark left blank is excluded with a warning (a blank must not pass for a good answer).
    blank = np.stack([truth.points_of(f"images/{s}.png") for s in stems]) + 3.0
    blank[0, 1] = np.nan
    write_landmarks(tmp_path / "blank.csv", LandmarkTable(stems, truth.names, blank))
    assert script.main(["--predictions", str(tmp_path / "blank.csv"), "--ground-truth", truth_csv,
                        "--ground-truth-subset", "--output-dir", str(tmp_path / "out_blank"),
                        "--no-plots"]) == 0
    assert ("warning: 1 landmark(s) have ground truth but no prediction; they are left out of "
            "every figure above") in capsys.readouterr().err
    # With the extension, or a folder path relative to another root, the same image matches.
    write_landmarks(tmp_path / "mixed.csv", LandmarkTable(
        ["phantom2d_008.png", "data/images/phantom2d_010"], truth.names,
        np.stack([truth.points_of(f"images/{s}.png") for s in stems])))
    result = evaluate_predictions(tmp_path / "mixed.csv", truth_csv, ground_truth_subset=True)
    np.testing.assert_allclose(result.errors.errors_mm, 0.0)
    # Another folder, or another extension, is another image.
    write_landmarks(tmp_path / "other.csv", LandmarkTable(
        ["elsewhere/phantom2d_010", "phantom2d_008.dcm"], truth.names, truth.points[:2]))
    with pytest.raises(KeraslmError, match=r"ids only in .*other.csv: elsewhere/phantom2d_010, "
                                           r"phantom2d_008.dcm;"):
        evaluate_predictions(tmp_path / "other.csv", truth_csv, ground_truth_subset=True)
    # Ambiguous: one id that could name two images, or two ids naming one image.
    write_landmarks(tmp_path / "truth_ab.csv",
                    LandmarkTable(["a/x.png", "b/x.png"], truth.names, truth.points[:2]))
    write_landmarks(tmp_path / "x.csv", LandmarkTable(["x"], truth.names, truth.points[:1]))
    with pytest.raises(KeraslmError, match=r"unambiguously: x \(in .*x.csv\) could be any of "
                                           r"a/x.png, b/x.png \(in .*truth_ab.csv\)"):
        evaluate_predictions(tmp_path / "x.csv", tmp_path / "truth_ab.csv", ground_truth_subset=True)
    write_landmarks(tmp_path / "truth_x.csv",
                    LandmarkTable(["images/a/x.png"], truth.names, truth.points[:1]))
    write_landmarks(tmp_path / "twice.csv",
                    LandmarkTable(["x", "a/x"], truth.names, truth.points[:2]))
    with pytest.raises(KeraslmError, match=r"unambiguously: x, a/x \(in .*twice.csv\) all name "
                                           r"images/a/x.png \(in .*truth_x.csv\)"):
        evaluate_predictions(tmp_path / "twice.csv", tmp_path / "truth_x.csv",
                             ground_truth_subset=True)


def test_overlays_2d_and_3d(tmp_path):
    rng = np.random.default_rng(0)
    image2d = Image(rng.random((40, 60)), spacing=(0.5, 1.0), origin=(10.0, -5.0))
    truth = image2d.index_to_physical([[10.0, 10.0], [40.0, 30.0], [NAN, NAN]])
    plot_overlay(str(tmp_path / "a.png"), image2d, truth, truth + 2.0, title="2D")
    image3d = Image(rng.random((12, 20, 30)), spacing=(1.0, 1.0, 2.0))
    truth3d = image3d.index_to_physical([[5.0, 5.0, 3.0], [20.0, 15.0, 8.0]])
    plot_overlay(str(tmp_path / "b.png"), image3d, truth3d, truth3d + 1.5, title="3D")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- a tiny trained phantom model


@pytest.fixture(scope="module")
def runs(trained_2d, tmp_path_factory):
    """Two run folders of one small trained model (conftest.py's `trained_2d`, fold 0 of a
    2-fold split) and (a copy relabelled) fold 1, so pooling covers every phantom image once
    without training twice; `phantom` is a copy of its dataset."""
    result, dataset = trained_2d
    root = tmp_path_factory.mktemp("evaluation")
    shutil.copytree(os.path.dirname(os.path.dirname(dataset.records[0].image_path)),
                    root / "phantom")
    shutil.copytree(result.output_dir, root / "fold0")
    shutil.copytree(root / "fold0", root / "fold1")
    config = json.loads((root / "fold1" / "config.json").read_text())
    config["fold"] = 1
    (root / "fold1" / "config.json").write_text(json.dumps(config))
    (root / "fold1" / "metrics.json").unlink()
    return root


def test_evaluate_script_pools_runs_and_writes_all_outputs(runs, capsys):
    output = runs / "out"
    code = _evaluate_script().main(
        ["--runs", str(runs / "fold0"), str(runs / "fold1"), "--output-dir", str(output),
         "--num-worst", "2", "--method", "tiny-unet"]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "predicted 6/6 images" in text and "tiny-unet" in text and "outliers > 10 mm" in text
    assert "444 points evaluated in 12 images x 37 landmarks" in text
    files = sorted(os.listdir(output))
    assert [f for f in files if not f.startswith("worst_")] == [
        "cumulative_error.png", "landmark_errors.png", "metrics.json", "predictions.csv",
        "predictions_named.csv", "report.md"]
    assert len([f for f in files if f.startswith("worst_")]) == 2
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["summary"]["num_images"] == 12 and len(metrics["sources"]) == 2
    # Fold 0 alone reproduces what training measured on its validation split: the run's final
    # validation goes through the same prediction graph, to 1e-4 mm per landmark.
    trained = json.loads((runs / "fold0" / "metrics.json").read_text())
    fold0 = evaluate_runs([str(runs / "fold0")])
    assert abs(fold0.summary()["mean_mm"] - trained["summary"]["mean_mm"]) < 1e-4
    per_landmark = np.nanmean(fold0.errors.errors_mm, axis=0)
    expected = [trained["per_landmark_mean_mm"][name] for name in fold0.landmark_names]
    np.testing.assert_allclose(per_landmark, expected, atol=1e-4, rtol=0)
    # The baseline: the model's recorded training positions on the same images, as training
    # measured it; printed beside the model's error and kept in metrics.json.
    assert fold0.baseline_summary()["mean_mm"] == pytest.approx(
        trained["mean_position_baseline"]["mean_mm"], abs=1e-6)
    assert "mean-position baseline (each landmark at its mean training position)" in text
    assert metrics["mean_position_baseline"]["num_images"] == 12
    assert set(read_landmarks(output / "predictions.csv", ndim=2).ids) == {f"phantom2d_{i:03d}" for i in range(12)}


def test_baseline_line_warns_when_the_model_does_not_beat_it():
    from keraslm.evaluation import format_baseline

    better = format_baseline({"mean_mm": 2.0, "median_mm": 1.5}, {"mean_mm": 8.0, "median_mm": 7.0})
    assert "4.0 x better" in better and "WARNING" not in better
    worse = format_baseline({"mean_mm": 9.0, "median_mm": 8.0}, {"mean_mm": 8.0, "median_mm": 7.0})
    assert "WARNING: the model does not beat the baseline" in worse
    assert "not available" in format_baseline({"mean_mm": 2.0}, None)


def test_evaluate_script_with_model_and_dataset(runs, capsys):
    code = _evaluate_script().main(
        ["--model", str(runs / "fold0" / "model.keras"), "--dataset", str(runs / "phantom"),
         "--fold", "1", "--num-folds", "2", "--output-dir", str(runs / "out_model"), "--no-plots",
         "--normalize-distance", "50", "--normalize-landmarks", "1,5"]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "normalised to 50 mm between landmarks 1 and 5" in text
    assert sorted(os.listdir(runs / "out_model")) == [
        "metrics.json", "predictions.csv", "predictions_named.csv", "report.md"]
    # An external test set: every image, no split.
    script = _evaluate_script()
    model = ["--model", str(runs / "fold0" / "model.keras"), "--dataset", str(runs / "phantom")]
    assert script.main(model + ["--all-images", "--output-dir", str(runs / "out_all"),
                                "--no-plots"]) == 0
    assert "evaluating 12 test images" in capsys.readouterr().out
    assert script.main(model + ["--test-fraction", "0", "--output-dir", str(runs / "out_none")]) == 2
    assert "holds out no images; --all-images evaluates every image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(model + ["--all-images", "--fold", "0"])
    assert "--all-images evaluates every image: leave out --fold" in capsys.readouterr().err


def test_model_and_run_bad_input(runs, capsys, tmp_path):
    test_set = run_test_set(str(runs / "fold0"))
    fewer = dataclasses.replace(
        test_set, landmark_names=test_set.landmark_names[:5],
        records=tuple(Record(r.id, r.image_path, r.points_mm[:5]) for r in test_set.records),
    )
    with pytest.raises(KeraslmError, match=r"model .*model.keras predicts 37 landmarks but dataset .* has 5 landmarks"):
        evaluate_model(str(runs / "fold0" / "model.keras"), fewer)
    volume = LandmarkDataset("volumes", (), test_set.landmark_names, ndim=3)
    with pytest.raises(KeraslmError, match=r"model m expects 2D images but dataset 'volumes' is 3D"):
        check_model_matches(load_detector(runs / "fold0" / "model.keras").spec, volume, "m")
    with pytest.raises(KeraslmError, match=r"absent.keras: no such model file"):
        evaluate_model(str(tmp_path / "absent.keras"), test_set)
    with pytest.raises(KeraslmError, match=r"nowhere: no such training run folder"):
        evaluate_runs([str(tmp_path / "nowhere")])
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text(json.dumps({"dataset": "phantom2d"}))
    with pytest.raises(KeraslmError, match=r"unfinished: no model.keras; the run has not finished"):
        evaluate_runs([str(tmp_path / "unfinished")])
    shutil.copytree(runs / "fold0", tmp_path / "moved")
    config = json.loads((tmp_path / "moved" / "config.json").read_text())
    config["seed"] = 7  # A different split than the one training validated on.
    (tmp_path / "moved" / "config.json").write_text(json.dumps(config))
    with pytest.raises(KeraslmError, match=r"moved: the split rebuilt from config.json holds ids"):
        run_test_set(str(tmp_path / "moved"))
    script = _evaluate_script()
    assert script.main(["--predictions", str(tmp_path / "p.csv"), "--ground-truth", str(tmp_path / "t.csv")]) == 1  # A missing file is bad data.
    assert "p.csv: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--predictions", str(tmp_path / "p.csv")])
    assert "--predictions needs a ground truth: --ground-truth CSV" in capsys.readouterr().err
    # Dataset options go with --model: refused with --runs and CSVs, not silently ignored.
    with pytest.raises(SystemExit):
        script.main(["--runs", str(runs / "fold0"), "--dataset", str(runs / "phantom")])
    assert "--dataset goes with --model: --runs evaluate each run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--predictions", "p.csv", "--ground-truth", "t.csv", "--units", "index",
                     "--spacing", "0.5"])
    assert ("--units, --spacing and --ground-truth both give the ground truth of --predictions"
            in capsys.readouterr().err)
    config["seed"] = 0
    config["dataset"] = os.path.join("elsewhere", "phantom")  # Relative, not found from here.
    (tmp_path / "moved" / "config.json").write_text(json.dumps(config))
    with pytest.raises(KeraslmError, match=r"moved.config.json: the run's dataset .*elsewhere.* "
                       r"cannot be loaded .*run from the folder the run was trained in"):
        run_test_set(str(tmp_path / "moved"))


def test_runs_trained_before_a_spacing_was_required_still_load(tmp_path):
    """A run trained on plain images without --spacing (then read at 1 mm per pixel) keeps
    loading its held-out split at that spacing; a new dataset load refuses it."""
    from keraslm.datasets import load_dataset
    from keraslm.errors import MissingSpacingError
    from keraslm.io import write_png

    for name in "abcd":
        write_png(str(tmp_path / f"{name}.png"), np.zeros((16, 12), np.uint8))
    (tmp_path / "landmarks.csv").write_text(
        "image,p_x,p_y\n" + "".join(f"{name},1,2\n" for name in "abcd"))
    with pytest.raises(MissingSpacingError):
        load_dataset(str(tmp_path / "landmarks.csv"), units="index")
    run = tmp_path / "old_run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "dataset": str(tmp_path / "landmarks.csv"), "units": "index", "image_spacing": None,
        "fold": None, "num_folds": 5, "test_fraction": 0.5, "seed": 0}))
    (run / "model.keras").write_bytes(b"")  # Finished (the split needs no network).
    test_set = run_test_set(str(run))
    assert len(test_set) == 2 and test_set.image_spacing == (1.0, 1.0)


def test_combine_prefixes_repeated_ids(runs):
    from keraslm.evaluation import combine

    part = evaluate_runs([str(runs / "fold0")])
    both = combine([part, dataclasses.replace(part, sources=({"run": "again"},))])
    assert isinstance(both, Evaluation) and len(set(both.ids)) == 12
    assert both.ids[0].startswith("fold0/") and both.ids[6].startswith("again/")


def test_held_out_groups_follow_the_pooled_runs(runs):
    """Cross-fitting of a pooled cross-validation goes by run: each image is labelled with the
    run it was held out from; one run alone (or sources without ids) falls back to None."""
    from keraslm.evaluation import combine, held_out_groups

    first = evaluate_runs([str(runs / "fold0")])
    assert held_out_groups(first) is None
    second = dataclasses.replace(first, ids=tuple(f"other{i}" for i in first.ids),
                                 sources=({**first.sources[0], "ids": [f"other{i}" for i in first.ids]},))
    both = combine([first, second])
    np.testing.assert_array_equal(held_out_groups(both), [0] * 6 + [1] * 6)
    assert held_out_groups(dataclasses.replace(both, sources=({"run": "x"}, {"run": "y"}))) is None


def test_reports_write_strict_json_and_say_when_nothing_is_large():
    """metrics.json and calibration.json hold no NaN (strict readers such as jq refuse it): a
    calibration quality without errors > 4 mm has caught_fraction NaN, written as null and
    said in words."""
    import math

    from keraslm.calibration import calibration_quality
    from keraslm.evaluation.report import format_calibration_quality
    from keraslm.evaluation.tables import json_finite

    payload = {"a": float("nan"), "b": [1.0, np.float32("inf"), (np.float64(2.0), None)],
               "c": {"d": np.float64("nan"), "e": "text", "f": 3}}
    assert json_finite(payload) == {"a": None, "b": [1.0, None, [2.0, None]],
                                    "c": {"d": None, "e": "text", "f": 3}}
    errors = np.linspace(0.5, 3.0, 12).reshape(4, 3)  # None above 4 mm.
    quality = calibration_quality(errors + 0.5, errors)
    assert quality["num_large"] == 0 and math.isnan(quality["caught_fraction"])
    text = json.dumps(json_finite(quality), allow_nan=False)
    assert json.loads(text)["caught_fraction"] is None
    line = format_calibration_quality(quality)
    assert "no error is > 4 mm to catch" in line and "nan" not in line


def test_evaluate_predictions_against_a_dataset_and_a_ground_truth_in_pixels(phantom2d_root, tmp_path,
                                                                          capsys):
    """--predictions with --dataset: the dataset's landmarks (mm, as the dataset reads them)
    are the ground truth. A ground-truth CSV in pixels against mm predictions (ISBI 2015's
    landmarks.csv against predictions.csv) gives errors that mean nothing: a warning says so."""
    from keraslm.datasets import load_dataset

    dataset = load_dataset(str(phantom2d_root))
    predicted = dataset.points_mm[:3] + np.array([0.6, 0.8])
    ids = [os.path.splitext(os.path.basename(r.image_path))[0] for r in dataset.records[:3]]
    write_landmarks(tmp_path / "pred.csv", LandmarkTable(ids, dataset.landmark_names, predicted))
    result = evaluate_predictions(tmp_path / "pred.csv", dataset, ground_truth_subset=True)
    np.testing.assert_allclose(result.errors.errors_mm, 1.0, atol=1e-9)
    assert result.sources[0]["ground_truth"] == f"dataset {dataset.name!r}"
    assert result.sources[0]["shape_size_ratio"] == pytest.approx(1.0, abs=1e-9)
    script = _evaluate_script()
    assert script.main(["--predictions", str(tmp_path / "pred.csv"), "--dataset",
                        str(phantom2d_root), "--ground-truth-subset", "--output-dir",
                        str(tmp_path / "out"), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "images without a prediction left out" in captured.out and "warning" not in captured.err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["summary"]["mean_mm"] == (
        pytest.approx(1.0))
    # The ground truth ten times the size (pixels of 0.1 mm): warned.
    write_landmarks(tmp_path / "pixels.csv", LandmarkTable(ids, dataset.landmark_names,
                                                           dataset.points_mm[:3] * 10))
    assert script.main(["--predictions", str(tmp_path / "pred.csv"), "--ground-truth",
                        str(tmp_path / "pixels.csv"), "--output-dir", str(tmp_path / "out2"),
                        "--no-plots"]) == 0
    error = capsys.readouterr().err
    assert re.search(r"warning: the ground truth's landmark shapes are 10(\.0)? times the size of "
                     r"the predictions'.*likely not in mm", error.replace("\n", " "))
    # One ground truth only; split options still refused.
    for extra, message in ((["--ground-truth", str(tmp_path / "pixels.csv"), "--dataset",
                             str(phantom2d_root)], "both give the ground truth"),
                           (["--dataset", str(phantom2d_root), "--fold", "0"], "--fold goes with --model"),
                           ([], "--predictions needs a ground truth")):
        with pytest.raises(SystemExit):
            script.main(["--predictions", str(tmp_path / "pred.csv"), *extra])
        assert message in capsys.readouterr().err


def test_evaluate_headerless_predictions_with_ndim(tmp_path, capsys):
    """--ndim goes with --predictions (a headerless CSV needs it; it was refused as a --model
    option)."""
    predictions, truth = _write_csvs(tmp_path)
    script = _evaluate_script()
    arguments = ["--predictions", predictions, "--ground-truth", truth, "--output-dir",
                 str(tmp_path / "out"), "--no-plots"]
    assert script.main(arguments) == 1  # Bad data: exit 1.
    assert "headerless landmark file" in capsys.readouterr().err
    assert script.main(arguments + ["--ndim", "2"]) == 0


@pytest.mark.parametrize("arguments, message", [
    (["--no-blend"], "--no-blend goes with --calibrate and --refine"),
    (["--no-blend", "--calibrate", "c.json"], "--no-blend goes with --calibrate and --refine"),
    (["--no-plots", "--num-worst", "8"], "--num-worst chooses how many worst images are plotted"),
    (["--num-worst", "-1"], "--num-worst must be >= 0"),
])
def test_evaluate_refuses_options_it_would_ignore(arguments, message, capsys):
    script = _evaluate_script()
    with pytest.raises(SystemExit):
        script.main(["--runs", "run_a", *arguments])
    assert message in capsys.readouterr().err


def test_evaluating_a_model_on_its_training_images_is_warned(trained_2d, tmp_path, capsys):
    """`--model RUN --fold 1` of a run trained on fold 0 scored the model on its own training
    images with no word; the run folder's config.json names its validation images."""
    result, dataset = trained_2d
    root = os.path.dirname(os.path.dirname(dataset.records[0].image_path))
    script = _evaluate_script()
    common = ["--model", result.output_dir, "--dataset", root, "--num-folds", "2", "--no-plots"]
    assert script.main(common + ["--fold", "1", "--output-dir", str(tmp_path / "f1")]) == 0
    error = capsys.readouterr().err
    assert (f"warning: 6 of the 6 test images were training images of {result.output_dir}"
            in error) and "the figures are not held-out" in error
    assert script.main(common + ["--fold", "0", "--output-dir", str(tmp_path / "f0")]) == 0
    assert "training images of" not in capsys.readouterr().err
