"""Ensembles: several global stages averaged, several local stages each refining that mean, as
one detector run in one graph (`keraslm.prediction.combine_detectors`, `load_predictor` with
lists); their evaluation, export and CLI syntax."""
import argparse
import json
import os
import re

import numpy as np
import pytest

from keraslm.errors import KeraslmError
from keraslm.prediction import (
    DetectorPredictor,
    LandmarkDetector,
    combine_detectors,
    load_detector,
    load_predictor,
    predict,
    refine_function,
)
from keraslm.preprocessing import prepare_on_grid


@pytest.fixture(scope="module")
def members(cascade_2d):
    """(dataset, [global runs], [local runs]): the shared cascade plus a second global stage on
    another grid and a second local stage, on the same held-out split; and a global run that
    held out other images."""
    from keraslm.training import TrainingConfig, train

    root, dataset, coarse, local, _ = cascade_2d
    common = dict(dataset=str(root / "phantom"), architecture="unet", steps=4, steps_per_epoch=2,
                  test_fraction=0.25, model_overrides={"filters": 4, "num_levels": 2}, jit="off")
    coarse2 = train(TrainingConfig(grid_shape=(40, 40), batch_size=2, seed=0,
                                   output_dir=str(root / "ensemble_global2"), **common))
    local2 = train(TrainingConfig(crop_shape=(12, 12), grid_spacing=2.5, batch_size=1,
                                  landmarks_per_image=8, translation_mm=4.0,
                                  output_dir=str(root / "ensemble_local2"), **common))
    other_split = train(TrainingConfig(grid_shape=(32, 32), batch_size=2, seed=3,
                                       output_dir=str(root / "ensemble_other_split"), **common))
    return dataset, [coarse, coarse2], [local, local2], other_split


@pytest.fixture(scope="module")
def cascade_export(cascade_2d):
    """The shared cascade's SavedModel version folder (conftest.py)."""
    return cascade_2d[4]


def _image(dataset, number=0):
    return dataset.read_image(dataset.records[number])


def _affine(matrix, points):
    matrix = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ matrix[:-1, :-1].T + matrix[:-1, -1]


def _refine(detector, image, points_index):
    """One local stage (a detector of one local stage) refining `points_index` of `image`,
    step by step outside the prediction graph: the image on the stage's fine grid, crops
    around the points (`refine_function`), back to image index. Returns (points, confidence)."""
    [stage] = detector.spec.local_stages
    refine = refine_function(detector.local_networks[0], stage)
    fine, fine_to_image = prepare_on_grid(image.array, np.asarray(image.spacing, np.float64),
                                          stage.grid, stage.normalization)
    centres = _affine(np.linalg.inv(np.asarray(fine_to_image)), points_index)
    points, confidence = refine(np.asarray(fine)[None, ..., None],
                                centres[None].astype(np.float32))
    return _affine(fine_to_image, np.asarray(points)[0]), np.asarray(confidence)[0]


def test_an_ensemble_of_one_is_the_cascade(members):
    dataset, globals_, locals_, _ = members
    image = _image(dataset)
    cascade = load_predictor(globals_[0].model_path, refine=locals_[0].model_path)
    one = load_predictor([globals_[0].model_path], refine=[locals_[0].model_path])
    assert isinstance(cascade, DetectorPredictor) and isinstance(one, DetectorPredictor)
    assert one.spec == cascade.spec and not one.spec.is_ensemble
    a, b = cascade.locate(image), one.locate(image)
    for key in ("landmarks_index", "landmarks_mm", "confidence", "spread_mm"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6)


def test_ensemble_averages_global_members_then_refines_their_mean(members, tmp_path):
    dataset, globals_, locals_, _ = members
    image = _image(dataset, 1)
    g = [load_detector(run.model_path) for run in globals_]
    lo = [load_detector(run.model_path) for run in locals_]
    found = [load_predictor(member).locate(image) for member in g]
    assert not np.allclose(found[0]["landmarks_index"], found[1]["landmarks_index"], atol=0.1)
    mean_global = (found[0]["landmarks_index"] + found[1]["landmarks_index"]) / 2
    # Stage by stage, outside the ensemble's graph: each local stage refines the global mean.
    refined = [_refine(local, image, mean_global) for local in lo]
    assert not np.allclose(refined[0][0], refined[1][0], atol=0.1)
    expected_index = (refined[0][0] + refined[1][0]) / 2
    expected_confidence = (refined[0][1] + refined[1][1]) / 2

    # The ensemble is one detector: saved as one .keras file, loaded and run as one graph.
    combined = combine_detectors(g + lo)
    assert isinstance(combined, LandmarkDetector) and combined.spec.is_ensemble
    assert combined.spec.landmark_names == g[0].spec.landmark_names
    assert [s.grid_shape for s in combined.spec.global_stages] == [(32, 32), (40, 40)]
    assert [s.crop_shape for s in combined.spec.local_stages] == [(16, 16), (12, 12)]
    combined.save(str(tmp_path / "ensemble.keras"))
    ensemble = load_predictor(str(tmp_path / "ensemble.keras"))
    assert ensemble.spec == combined.spec
    assert len(ensemble.detector.networks) == len(ensemble.detector.local_networks) == 2
    out = ensemble.locate(image)
    np.testing.assert_allclose(out["landmarks_index"], expected_index, atol=2e-3)
    np.testing.assert_allclose(out["confidence"], expected_confidence, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out["landmarks_mm"], image.index_to_physical(out["landmarks_index"]),
                               atol=1e-9)
    # Global members alone: the mean of their points, confidences and spreads.
    only_global = load_predictor(g).locate(image)
    for key in ("landmarks_index", "confidence", "spread_mm"):
        np.testing.assert_allclose(only_global[key], (found[0][key] + found[1][key]) / 2,
                                   rtol=1e-4, atol=2e-3)


def test_export_names_the_member_that_does_not_fit(members, tmp_path, capsys):
    """keraslm-export A,B with B's landmarks in another order: B is named, and the first
    difference (exit 1, the files do not fit)."""
    from keraslm.commands.export import main as export_main

    _, globals_, _, _ = members
    first = load_detector(globals_[1].model_path)
    turned = LandmarkDetector(first.spec.replace(
        landmark_names=tuple(reversed(first.spec.landmark_names))), first.networks)
    turned.save(str(tmp_path / "turned.keras"))
    assert export_main([f"{globals_[0].model_path},{tmp_path / 'turned.keras'}",
                        str(tmp_path / "served")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'turned.keras'} does not fit "
                            f"{globals_[0].model_path}: the stages disagree in their landmarks: "
                            "the same landmarks in another order (position 0:")
    assert not (tmp_path / "served").exists()


def test_ensemble_members_are_checked(members, cascade_export):
    dataset, globals_, locals_, _ = members
    g = [run.model_path for run in globals_]
    lo = [run.model_path for run in locals_]
    with pytest.raises(KeraslmError, match=f"^{re.escape(lo[0])} is the local stage of a "
                       "coarse-to-fine model"):
        load_predictor([g[0], lo[0]])
    with pytest.raises(KeraslmError, match=f"^{re.escape(g[1])}: the refining model must be a "
                       "local stage"):
        load_predictor(g, refine=[lo[0], g[1]])
    first = load_detector(g[1])
    renamed = LandmarkDetector(first.spec.replace(landmark_names=("x",) * 37), first.networks)
    with pytest.raises(KeraslmError, match="disagree in their landmarks"):
        load_predictor([g[0], renamed])
    with pytest.raises(KeraslmError, match="disagree in their landmarks"):
        combine_detectors([renamed, load_detector(lo[0])])
    with pytest.raises(KeraslmError, match="needs a global stage; all of these are local stages"):
        load_predictor([], refine=lo)
    missing = os.path.join(os.path.dirname(g[0]), "nowhere.keras")
    with pytest.raises(KeraslmError, match=f"^{re.escape(missing)}: no such model file"):
        load_predictor([g[0], missing])
    # An export answers as it was exported: not a member of another ensemble.
    with pytest.raises(KeraslmError, match=f"^{re.escape(cascade_export)}: a SavedModel answers "
                       "as it was exported and cannot be combined with other stages"):
        load_predictor([g[0], cascade_export])
    with pytest.raises(KeraslmError, match="cannot be combined with other stages"):
        load_predictor(g[0], refine=[cascade_export])


# Slow (12 s: evaluations of several run folders).
@pytest.mark.slow
def test_evaluate_runs_takes_ensembles_and_checks_their_split(members):
    from keraslm.evaluation import evaluate_runs

    dataset, globals_, locals_, other_split = members
    runs = [run.output_dir for run in globals_]
    local_runs = [run.output_dir for run in locals_]
    result = evaluate_runs([runs], refine_runs=[local_runs])
    ensemble = load_predictor([r.model_path for r in globals_],
                              refine=[r.model_path for r in locals_])
    test_ids = list(result.ids)
    by_id = {record.id: record for record in dataset.records}
    for number, image_id in enumerate(test_ids):
        out = ensemble.locate(dataset.read_image(by_id[image_id]))
        np.testing.assert_allclose(result.predicted_mm[number], out["landmarks_mm"], atol=1e-6)
        np.testing.assert_allclose(result.confidence[number], out["confidence"], rtol=1e-5)
    assert " & " in result.sources[0]["run"]
    assert result.method == "unet x2 + local unet x2 (ensemble)"
    assert evaluate_runs([runs]).method == "unet x2 (ensemble)"
    with pytest.raises(KeraslmError, match="ensemble's members must hold out the same split"):
        evaluate_runs([[runs[0], other_split.output_dir]])
    with pytest.raises(KeraslmError, match="a local stage must hold out the same split"):
        evaluate_runs([other_split.output_dir], refine_runs=[local_runs])


@pytest.mark.slow
def test_exported_ensemble_answers_like_the_keras_ensemble(members, tmp_path):
    import tensorflow as tf

    from keraslm.commands.export import main as export_main
    from keraslm.prediction.predictors import read_saved_model_spec
    from keraslm.serving import ServingClient

    dataset, globals_, locals_, _ = members
    base = tmp_path / "served" / "ensemble"
    assert export_main([",".join(r.output_dir for r in globals_), str(base), "--refine",
                        ",".join(r.output_dir for r in locals_)]) == 0
    version = str(base / "1")
    asset = json.load(open(os.path.join(version, "assets", "keraslm.json")))
    assert asset["format"] == "keraslm-detector/2"
    assert [s["grid_shape"] for s in asset["global_stages"]] == [[32, 32], [40, 40]]
    assert [s["crop_shape"] for s in asset["local_stages"]] == [[16, 16], [12, 12]]
    assert sorted(asset["saved_model"]["inputs"]) == ["predict_array", "predict_image"]
    paths = [r.image_path for r in dataset.records[:2]]
    keras_ensemble = load_predictor([r.model_path for r in globals_],
                                    refine=[r.model_path for r in locals_])
    assert read_saved_model_spec(version) == keras_ensemble.spec
    assert ServingClient("ensemble", version).spec == keras_ensemble.spec
    expected = predict(keras_ensemble, paths, spacing=dataset.image_spacing)
    served = predict(version, paths, spacing=dataset.image_spacing)
    for a, b in zip(expected, served):
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-3, atol=1e-3)
    loaded = tf.saved_model.load(version)
    assert sorted(loaded.signatures) == ["predict_array", "predict_image", "serving_default"]
    with open(paths[0], "rb") as handle:
        data = handle.read()
    spacing = np.asarray([dataset.image_spacing[:2]], np.float32)
    answer = loaded.signatures["predict_image"](image_bytes=tf.constant([data]),
                                                spacing=tf.constant(spacing))
    np.testing.assert_allclose(answer["landmarks_mm"].numpy()[0], served[0].points_mm, atol=1e-3)


@pytest.mark.slow
def test_predict_command_takes_ensembles(members, tmp_path, capsys):
    from keraslm.commands.predict import main

    dataset, globals_, locals_, _ = members
    paths = [r.image_path for r in dataset.records[:2]]
    spacing = ",".join(str(s) for s in dataset.image_spacing[:2])
    global_paths = [r.model_path for r in globals_]
    local_paths = [r.model_path for r in locals_]
    for iterations in (1, 2):
        out = tmp_path / f"p{iterations}"
        assert main([",".join(global_paths), "--refine", ",".join(local_paths), *paths,
                     "--spacing", spacing, "--refine-iterations", str(iterations),
                     "--output-dir", str(out)]) == 0
        written = json.load(open(out / "predictions.json"))
        expected = predict(load_predictor(global_paths, refine=local_paths, iterations=iterations),
                           paths, spacing=dataset.image_spacing)
        for entry, prediction in zip(written["predictions"], expected):
            np.testing.assert_allclose(
                [entry["landmarks"][name]["mm"] for name in prediction.landmark_names],
                prediction.points_mm, atol=1e-4)
    one_pass = json.load(open(tmp_path / "p1" / "predictions.json"))
    two_passes = json.load(open(tmp_path / "p2" / "predictions.json"))
    assert one_pass != two_passes
    capsys.readouterr()
    assert main([",".join(global_paths), "--refine-iterations", "2", *paths]) == 2
    assert "--refine-iterations needs --refine" in capsys.readouterr().err


def test_ensemble_paths_argument():
    from keraslm.cli import ensemble_paths

    assert ensemble_paths("runs/a") == "runs/a"
    assert ensemble_paths("runs/a,runs/b") == ["runs/a", "runs/b"]
    with pytest.raises(argparse.ArgumentTypeError, match="empty member"):
        ensemble_paths("runs/a,")
    with pytest.raises(argparse.ArgumentTypeError, match="names one model twice"):
        ensemble_paths("runs/a,runs/b,./runs/a/")


def test_ensemble_paths_keeps_an_existing_path_with_a_comma(tmp_path):
    from keraslm.cli import ensemble_paths

    folder = tmp_path / "run,1"
    folder.mkdir()
    assert ensemble_paths(str(folder)) == str(folder)
