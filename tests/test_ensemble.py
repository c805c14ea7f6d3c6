"""Ensembles (`keraslm.inference.EnsemblePredictor`): several global stages averaged, several
local stages each refining that mean, in one graph; their evaluation, export and CLI syntax."""
import argparse
import json
import os

import numpy as np
import pytest

from keraslm.errors import KeraslmError
from keraslm.inference import CascadePredictor, EnsemblePredictor, load_predictor, predict


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


def _image(dataset, number=0):
    return dataset.read_image(dataset.records[number])


def test_an_ensemble_of_one_is_the_cascade(members):
    dataset, globals_, locals_, _ = members
    image = _image(dataset)
    cascade = load_predictor(globals_[0].model_path, refine=locals_[0].model_path)
    assert isinstance(cascade, CascadePredictor)
    one = load_predictor([globals_[0].model_path], refine=[locals_[0].model_path])
    assert isinstance(one, EnsemblePredictor)
    a, b = cascade.locate(image), one.locate(image)
    for key in ("landmarks_index", "landmarks_mm", "confidence", "spread_mm"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6)


def test_ensemble_averages_global_members_then_refines_their_mean(members):
    dataset, globals_, locals_, _ = members
    image = _image(dataset, 1)
    g = [load_predictor(run.model_path) for run in globals_]
    lo = [load_predictor(run.model_path) for run in locals_]
    # Stage by stage, outside the ensemble's graph: the NumPy preprocessing of CascadePredictor.
    found = [member.locate(image) for member in g]
    assert not np.allclose(found[0]["landmarks_index"], found[1]["landmarks_index"], atol=0.1)
    mean_global = (found[0]["landmarks_index"] + found[1]["landmarks_index"]) / 2
    refined = [CascadePredictor(g[0], local).refine_image(image, mean_global.astype(np.float32))
               for local in lo]
    expected_index = (refined[0][0] + refined[1][0]) / 2
    expected_confidence = (refined[0][1] + refined[1][1]) / 2

    ensemble = EnsemblePredictor(g, lo)
    out = ensemble.locate(image)
    np.testing.assert_allclose(out["landmarks_index"], expected_index, atol=2e-3)
    np.testing.assert_allclose(out["confidence"], expected_confidence, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out["landmarks_mm"], image.index_to_physical(out["landmarks_index"]),
                               atol=1e-9)
    assert ensemble.metadata["landmark_names"] == g[0].metadata["landmark_names"]
    assert [m["grid_shape"] for m in ensemble.metadata["ensemble"]["global"]] == [[32, 32], [40, 40]]
    # Global members alone: the mean of their points.
    only_global = EnsemblePredictor(g).locate(image)
    np.testing.assert_allclose(only_global["landmarks_index"], mean_global, atol=2e-3)


def test_ensemble_members_are_checked(members):
    from keraslm.detector import check_ensemble

    dataset, globals_, locals_, _ = members
    g = [load_predictor(run.model_path) for run in globals_]
    lo = [load_predictor(run.model_path) for run in locals_]
    with pytest.raises(KeraslmError, match="member 2 is a local stage where a global"):
        EnsemblePredictor([g[0], lo[0]])
    with pytest.raises(KeraslmError, match="member 3 is a global stage where a local"):
        EnsemblePredictor(g, [g[1]])
    renamed = dict(g[1].metadata, landmark_names=["x"] * len(g[1].metadata["landmark_names"]))
    with pytest.raises(KeraslmError, match="disagree in their landmarks"):
        check_ensemble([g[0].metadata, renamed])
    with pytest.raises(KeraslmError, match="at least one global"):
        EnsemblePredictor([], lo)
    with pytest.raises(KeraslmError, match="must be Keras models"):
        EnsemblePredictor([g[0], object()])


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
    assert " & " in result.sources[0]["run"]
    assert result.method == "unet x2 + local unet x2 (ensemble)"
    assert evaluate_runs([runs]).method == "unet x2 (ensemble)"
    with pytest.raises(KeraslmError, match="ensemble's members must hold out the same split"):
        evaluate_runs([[runs[0], other_split.output_dir]])
    with pytest.raises(KeraslmError, match="a local stage must hold out the same split"):
        evaluate_runs([other_split.output_dir], refine_runs=[local_runs])


@pytest.mark.slow
def test_exported_ensemble_answers_like_the_keras_ensemble(members, tmp_path):
    from keraslm.commands.export import main as export_main

    dataset, globals_, locals_, _ = members
    base = tmp_path / "served" / "ensemble"
    assert export_main([",".join(r.output_dir for r in globals_), str(base), "--refine",
                        ",".join(r.output_dir for r in locals_)]) == 0
    version = str(base / "1")
    metadata = json.load(open(os.path.join(version, "assets", "keraslm.json")))
    assert len(metadata["ensemble"]["global"]) == 2 and len(metadata["ensemble"]["local"]) == 2
    assert "landmarks" not in metadata["saved_model"]["signatures"]
    assert "refine" not in metadata["saved_model"]["signatures"]
    paths = [r.image_path for r in dataset.records[:2]]
    keras_ensemble = load_predictor([r.model_path for r in globals_],
                                    refine=[r.model_path for r in locals_])
    expected = predict(keras_ensemble, paths, spacing=dataset.image_spacing)
    served = predict(version, paths, spacing=dataset.image_spacing)
    for a, b in zip(expected, served):
        np.testing.assert_allclose(a.points_mm, b.points_mm, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-3, atol=1e-3)
    import tensorflow as tf

    loaded = tf.saved_model.load(version)
    assert "landmarks" not in loaded.signatures and "predict_image" in loaded.signatures
    with open(paths[0], "rb") as handle:
        data = handle.read()
    spacing = np.asarray([dataset.image_spacing[:2]], np.float32)
    answer = loaded.signatures["predict_image"](image_bytes=tf.constant([data]),
                                                spacing=tf.constant(spacing))
    np.testing.assert_allclose(answer["landmarks_mm"].numpy()[0], served[0].points_mm, atol=1e-3)
    from keraslm.serving import ServingClient

    with pytest.raises(KeraslmError, match="no 'landmarks' signature"):
        ServingClient("ensemble", version, signature_name="landmarks")
    from keraslm.export import upgrade_saved_model

    with pytest.raises(KeraslmError, match="an ensemble's export has no 'landmarks' signature"
                       ".*nothing to upgrade"):
        upgrade_saved_model(version, str(tmp_path / "upgraded"))
    assert not (tmp_path / "upgraded").exists()
    assert ServingClient("ensemble", version).image_signatures


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
        expected = predict(EnsemblePredictor([load_predictor(p) for p in global_paths],
                                             [load_predictor(p) for p in local_paths],
                                             iterations=iterations), paths,
                           spacing=dataset.image_spacing)
        for entry, prediction in zip(written["predictions"], expected):
            np.testing.assert_allclose(
                [entry["landmarks"][name]["mm"] for name in prediction.landmark_names],
                prediction.points_mm, atol=1e-4)
    one_pass = json.load(open(tmp_path / "p1" / "predictions.json"))
    two_passes = json.load(open(tmp_path / "p2" / "predictions.json"))
    assert one_pass != two_passes
    assert main([",".join(global_paths), "--refine-iterations", "2", *paths]) == 2
    assert "--refine-iterations needs --refine" in capsys.readouterr().err


def test_ensemble_paths_argument():
    from keraslm.cli import ensemble_paths

    assert ensemble_paths("runs/a") == "runs/a"
    assert ensemble_paths("runs/a,runs/b") == ["runs/a", "runs/b"]
    with pytest.raises(argparse.ArgumentTypeError, match="empty member"):
        ensemble_paths("runs/a,")


def test_ensemble_paths_keeps_an_existing_path_with_a_comma(tmp_path):
    from keraslm.cli import ensemble_paths

    folder = tmp_path / "run,1"
    folder.mkdir()
    assert ensemble_paths(str(folder)) == str(folder)
