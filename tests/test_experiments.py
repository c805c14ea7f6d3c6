"""Experiment drivers (experiments/*.py) in quick mode, and the table formatting."""
import importlib.util
import json
import math
import os

import pytest

from keraslm import KeraslmError
from keraslm.experiments import format_landmark_table, format_paper_table, format_sdr_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISBI_ROOT = os.path.join(REPO, "..", "shared", "data", "isbi2015-train")
needs_isbi = pytest.mark.skipif(not os.path.isdir(ISBI_ROOT),
                                reason=f"ISBI 2015 training images not found at {ISBI_ROOT}")
SUMMARY = {"median_mm": 1.234, "mean_mm": 2.0, "std_mm": 0.5, "outliers": 3,
           "outlier_percent": 0.0361, "sdr_2.0mm_percent": 75.0, "sdr_2.5mm_percent": 80.0,
           "sdr_3.0mm_percent": 90.0, "sdr_4.0mm_percent": 99.5}


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_results(output_dir, expected_rows):
    assert os.path.isfile(output_dir / "table.md")
    with open(output_dir / "results.json", encoding="utf-8") as handle:
        results = json.load(handle)
    assert [(row.get("set", ""), row["architecture"]) for row in results["rows"]] == expected_rows
    for row in results["rows"]:
        for key in ("median_mm", "mean_mm", "std_mm"):
            assert math.isfinite(row["summary"][key])
    assert results["wall_seconds"] > 0
    for record in results["runs"]:
        assert os.path.isfile(os.path.join(record["run"], "metrics.json"))
    return results


def test_format_paper_table():
    rows = [{"set": "full", "method": "U-Net", "input": "64x64", "target": "64x64",
             "weights": 2.0, "summary": SUMMARY},
            {"set": "full", "method": "SpatialConf-Net", "input": "64x64", "target": "64x64",
             "weights": 1.0, "summary": {**SUMMARY, "outliers": 0, "outlier_percent": 0.0}},
            {"set": "reduced", "method": "U-Net", "input": "64x64", "target": "64x64",
             "weights": 2.0, "summary": {**SUMMARY, "median_mm": None}}]
    assert format_paper_table(rows).splitlines() == [
        "| Set | Method | Input | Target | Median (mm) | Mean +- SD (mm) | Outliers > 10 mm | #w |",
        "|---|---|---|---|---|---|---|---|",
        "| full | U-Net | 64x64 | 64x64 | 1.23 | 2.00 +- 0.50 | 3 (0.036 %) | 2.00 |",
        "|  | SpatialConf-Net | 64x64 | 64x64 | 1.23 | 2.00 +- 0.50 | 0 (0.000 %) | 1.00 |",
        "| reduced | U-Net | 64x64 | 64x64 | - | 2.00 +- 0.50 | 3 (0.036 %) | 2.00 |",
    ]
    assert format_paper_table(rows[:1], include_set=False, include_weights=False).splitlines()[2] == (
        "| U-Net | 64x64 | 64x64 | 1.23 | 2.00 +- 0.50 | 3 (0.036 %) |")


def test_format_sdr_and_landmark_tables():
    assert format_sdr_table([{"method": "U-Net", "summary": SUMMARY}]).splitlines()[2] == (
        "| U-Net | 2.00 +- 0.50 | 1.23 | 75.0 % | 80.0 % | 90.0 % | 99.5 % | 3 (0.04 %) |")
    row = {"name": "sella", "mean_mm": 1.0, "std_mm": 0.25, "sdr_2.0mm_percent": 100.0}
    assert format_landmark_table({"SCN": [row], "U-Net": [{**row, "mean_mm": 3.0}]}).splitlines() == [
        "| Landmark | SCN mean +- SD (mm) | SCN SDR 2 mm | U-Net mean +- SD (mm) | U-Net SDR 2 mm |",
        "|---|---|---|---|---|",
        "| sella | 1.00 +- 0.25 | 100.0 % | 3.00 +- 0.25 | 100.0 % |",
    ]


@pytest.mark.slow
def test_table1_quick_and_rerun_skips(tmp_path, capsys):
    output = tmp_path / "table1"
    assert _script("table1_phantom2d").main(["--quick", "--output-dir", str(output)]) == 0
    architectures = ["downsampling", "convonly", "unet", "scn"]
    results = _check_results(output, [(s, a) for s in ("full", "reduced") for a in architectures])
    assert {r["status"] for r in results["runs"]} == {"trained"}
    assert "| full | Downsampling-Net | 32x32 | 8x8 |" in capsys.readouterr().out
    assert _script("table1_phantom2d").main(["--quick", "--output-dir", str(output)]) == 0
    rerun = _check_results(output, [(s, a) for s in ("full", "reduced") for a in architectures])
    assert {r["status"] for r in rerun["runs"]} == {"skipped"}
    assert [r["summary"] for r in rerun["rows"]] == [r["summary"] for r in results["rows"]]
    # The training time of each run is kept in its folder and summed on the rerun.
    recorded = [r["recorded_seconds"] for r in rerun["runs"]]
    assert recorded == [r["seconds"] for r in results["runs"]] and min(recorded) > 0
    assert f"total training time recorded in the run folders: {sum(recorded):.0f} s" in (
        output / "table.md").read_text()
    assert "over 8 of 8 runs" in (output / "table.md").read_text()


@pytest.mark.slow
def test_table2_quick(tmp_path):
    output = tmp_path / "table2"
    assert _script("table2_phantom3d").main(["--quick", "--output-dir", str(output)]) == 0
    _check_results(output, [("", a) for a in ("downsampling", "convonly", "unet", "scn")])


def test_isbi2015_driver_passes_global_and_local_model_options(tmp_path, monkeypatch):
    import keraslm.experiments

    seen = {}

    def fake(output_dir, dataset_root, **kwargs):
        seen.update(kwargs)
        return {"markdown": ""}

    monkeypatch.setattr(keraslm.experiments, "isbi2015_cv", fake)
    argv = ["--dataset-root", str(tmp_path), "--output-dir", str(tmp_path / "out"),
            "--architectures", "scn2019", "--model-option", "dropout=0.5", "--filters", "16"]
    assert _script("isbi2015_cv").main(argv + ["--local-model-option", "filters=48"]) == 0
    assert seen["architectures"] == ["scn2019"]
    assert seen["overrides"] == {"filters": 16, "dropout": 0.5}
    assert seen["local"].model_overrides == {"filters": 48}
    assert seen["rotation_degrees"] is None and seen["scale_range"] is None  # the preset's
    assert _script("isbi2015_cv").main(argv + ["--rotation-degrees", "8", "--scale-range", "0.05"]) == 0
    assert seen["local"].model_overrides is None  # the local stage takes the global overrides
    assert (seen["rotation_degrees"], seen["scale_range"]) == (8.0, 0.05)
    assert seen["ensemble_grid_shape"] is None and seen["ensemble_local"] is None
    assert _script("isbi2015_cv").main(argv + ["--ensemble-grid-shape", "240,208",
                                               "--ensemble-local-elastic-mm", "3"]) == 0
    assert seen["ensemble_grid_shape"] == (240, 208)
    assert seen["local"].elastic_mm is None and seen["ensemble_local"].elastic_mm == 3.0
    assert seen["ensemble_local"].crop_shape == seen["local"].crop_shape


def test_blended_fold_errors_fit_each_fold_on_the_others():
    """The driver's blended rows: each fold's points blended with weights fitted on the other
    folds only (a fold's own truth does not move its result), and the weights of all folds."""
    import numpy as np

    from keraslm.experiments.runs import StagePoints, blended_fold_errors

    rng = np.random.default_rng(0)
    names = ["a", "b"]

    def fold(number, refined_sd):
        truth = rng.normal(size=(40, 2, 2)) * 10
        return StagePoints(tuple(f"f{number}_{i}" for i in range(40)),
                           truth + rng.normal(size=truth.shape),
                           truth + rng.normal(size=truth.shape) * np.array(refined_sd)[None, :, None],
                           truth)

    parts = [fold(number, [0.3, 5.0]) for number in range(3)]
    errors, weights = blended_fold_errors(parts, names)
    np.testing.assert_allclose(weights, [0.9, 0.0])
    assert [e.ids for e in errors] == [p.ids for p in parts]
    # landmark b: weight 0 -> the global point's error; landmark a: near the refined one's.
    np.testing.assert_allclose(errors[1].errors_mm[:, 1],
                               np.linalg.norm(parts[1].global_mm[:, 1] - parts[1].ground_truth_mm[:, 1], axis=-1))
    refined_a = np.linalg.norm(parts[1].refined_mm[:, 0] - parts[1].ground_truth_mm[:, 0], axis=-1)
    assert errors[1].errors_mm[:, 0].mean() < 1.1 * refined_a.mean()
    # Fold 0's points come from the weights of folds 1 and 2 alone, whatever fold 0's truth.
    from keraslm.calibration import blend_stages, fit_local_weight

    moved = StagePoints(parts[0].ids, parts[0].global_mm, parts[0].refined_mm, parts[0].global_mm)
    again, _ = blended_fold_errors([moved] + parts[1:], names)
    others = [np.concatenate([getattr(p, field) for p in parts[1:]])
              for field in ("global_mm", "refined_mm", "ground_truth_mm")]
    points_0 = np.asarray(blend_stages(moved.global_mm, moved.refined_mm, fit_local_weight(*others)))
    np.testing.assert_allclose(again[0].errors_mm, np.linalg.norm(points_0 - moved.ground_truth_mm, axis=-1))
    with pytest.raises(KeraslmError, match="at least 2 folds"):
        blended_fold_errors(parts[:1], names)


def test_isbi2015_missing_folder(tmp_path, capsys):
    assert _script("isbi2015_cv").main(["--quick", "--dataset-root", str(tmp_path / "absent"),
                                        "--output-dir", str(tmp_path / "out")]) == 0
    assert "skipped: the ISBI 2015 training folder" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out")


def _isbi2015_quick(tmp_path, *arguments):
    """The ISBI driver in quick mode on the first 2 folds; its output folder."""
    output = tmp_path / "isbi"
    assert _script("isbi2015_cv").main(["--quick", "--dataset-root", ISBI_ROOT, "--output-dir",
                                        str(output), "--folds", "2", *arguments]) == 0
    return output


@pytest.mark.slow
@needs_isbi
def test_isbi2015_quick(tmp_path):
    output = _isbi2015_quick(tmp_path, "--rotation-degrees", "8", "--scale-range", "0.05")
    results = _check_results(output, [("", "scn")] * 3 + [("", "unet")] * 3)
    for run, expected in (("scn_fold0", (8.0, 0.05)), ("local_unet_fold0", (15.0, 0.1))):
        with open(output / "runs" / run / "config.json", encoding="utf-8") as handle:
            settings = json.load(handle)["settings"]
        assert (settings["rotation_degrees"], settings["scale"]) == expected  # global stage only
    table = (output / "table.md").read_text()
    assert "rotation up to 8 degrees, scaling up to 0.05" in table
    methods = [f"{net}{stage}" for net in ("SpatialConf-Net", "U-Net")
               for stage in ("", " + local U-Net", " + local U-Net, blended")]
    assert [row["method"] for row in results["rows"]] == methods
    # One row per method and fold, each over that fold's held-out images (2 of the 10).
    assert [row["method"] for row in results["per_fold"]] == [
        f"{method}, fold {fold} (2 images)" for method in methods for fold in (0, 1)]
    assert "| SpatialConf-Net + local U-Net, blended, fold 1 (2 images) |" in table
    assert "w fitted on the other folds' held-out predictions" in table
    assert set(results["local_weight"]) == {"scn", "unet"}
    assert all(0 <= w <= 1 for w in results["local_weight"]["scn"].values())
    assert len(results["per_landmark"]["U-Net"]) == 19
    assert len(results["per_landmark"]["U-Net + local U-Net"]) == 19
    assert os.path.isfile(output / "cumulative_error.png")
    assert os.path.isfile(output / "runs" / "scn_fold0" / "stage_points_mm.npz")
    assert "local_stage" in (output / "table.md").read_text()
    with open(output / "splits" / "fold0_test.txt", encoding="utf-8") as handle:
        assert len(handle.read().split()) == 2  # 10 images, 5 folds.
    assert os.path.isfile(output / "runs" / "unet_fold1" / "stage_points_mm.npz")


@pytest.mark.slow
@needs_isbi
def test_isbi2015_quick_ensemble(tmp_path):
    output = _isbi2015_quick(tmp_path, "--architectures", "scn", "--ensemble-grid-shape", "40,32",
                             "--ensemble-local-elastic-mm", "2")
    results = _check_results(output, [("", "scn")] * 5)
    label = "SpatialConf-Net x2 + local U-Net x2 (ensemble)"
    assert [row["method"] for row in results["rows"]][3:] == [label, f"{label}, blended"]
    runs = sorted(os.path.basename(record["run"]) for record in results["runs"])
    assert runs == sorted(f"{name}_fold{fold}" for fold in (0, 1) for name in (
        "scn", "scn_member2", "local_unet", "local_unet_member2"))
    with open(output / "runs" / "scn_member2_fold0" / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["grid_shape"] == [40, 32]
    with open(output / "runs" / "local_unet_member2_fold0" / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["settings"]["elastic_mm"] == 2.0
    assert os.path.isfile(output / "runs" / "scn_fold0" / "stage_points_ensemble_mm.npz")
    assert os.path.isfile(output / "runs" / "scn_fold0" / "stage_points_mm.npz")
    table = (output / "table.md").read_text()
    assert "ensemble_global" in table and "elastic deformation 2.0 mm" in table
    assert set(results["local_weight"]) == {"scn", "scn ensemble"}
    # The ensemble row equals the ensemble's own prediction of a held-out image.
    from keraslm.evaluation import evaluate_runs

    run = lambda name: str(output / "runs" / name)
    direct = evaluate_runs([[run("scn_fold0"), run("scn_member2_fold0")]],
                           refine_runs=[[run("local_unet_fold0"), run("local_unet_member2_fold0")]])
    fold0 = [row for row in results["per_fold"] if row["method"] == f"{label}, fold 0 (2 images)"]
    assert fold0[0]["summary"]["mean_mm"] == pytest.approx(direct.summary()["mean_mm"], abs=1e-3)


def test_publish_copies_generated_tables(tmp_path):
    publish = _script("publish")
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    assert publish.EXPERIMENTS == ("isbi2015_cv", "isbi2015_v4", "isbi2015_v6",
                                   "isbi2015_facing/fold0_global",
                                   "isbi2015_facing/fold0_global_flip", "isbi2015_facing/fold0_c2f",
                                   "isbi2015_facing/fold0_c2f_flip",
                                   "isbi2015_facing/fold0_c2f_mixed",
                                   "isbi2015_facing/fold1_global", "isbi2015_facing/fold1_c2f",
                                   "isbi2015_facing/fold1_c2f_retrained",
                                   "isbi2015_facing/fold1_c2f_flip",
                                   "isbi2015_flag/fold0", "isbi2015_flag/folds01",
                                   "isbi2015_flag/fold1",
                                   "isbi2015_annotators/fold0",
                                   "isbi2015_annotators/fold1", "isbi2015_queue",
                                   "isbi2015_records", "isbi2015_flag_signals",
                                   "isbi2015_flag_signals_ensemble",
                                   "table1_phantom2d", "table2_phantom3d", "benchmarks")
    page = docs / "results" / "all.md"
    page.write_text("intro\n" + "".join(
        f"<!-- results:{n} -->\nSTALE TEXT\n<!-- /results:{n} -->\n" for n in publish.EXPERIMENTS))
    other = docs / "index.md"
    other.write_text("no markers here\n")
    results = tmp_path / "experiments" / "results"
    (results / "isbi2015_cv").mkdir(parents=True)
    (results / "isbi2015_cv" / "table.md").write_text(
        "# ISBI\n\n## Settings\n| a | b |\n|---|---|\n| 1 | 2 |\n\nCurve: cumulative_error.png\n")
    (results / "isbi2015_cv" / "cumulative_error.png").write_bytes(b"png")
    arguments = ["--docs-dir", str(docs), "--results-dir", str(results)]
    assert publish.main(arguments) == 0
    text = page.read_text()
    assert "STALE TEXT" not in text and "| 1 | 2 |" in text and "##### Settings" in text
    assert "# ISBI" not in text  # the table's title gives way to the page's heading
    # The plot is linked relative to the page (results/), under its repository path.
    plot = os.path.relpath(results / "isbi2015_cv", publish.REPO) + "/cumulative_error.png"
    assert f"(../{plot})" in text
    assert "Not run yet: `python experiments/table1_phantom2d.py`" in text
    assert "Not run yet: `python experiments/isbi2015_cv.py --output-dir experiments/results/isbi2015_v4" in text
    assert "--ensemble-grid-shape 240,208 --ensemble-local-elastic-mm 3 --folds 2`" in text
    assert "P1: training step" in text and "*not run yet*" in text
    assert other.read_text() == "no markers here\n"
    assert publish.main(arguments) == 0
    assert page.read_text() == text  # idempotent
    page.write_text("no markers")
    assert publish.main(arguments) == 2

def test_isbi2015_queue_states_commands_and_order(tmp_path, monkeypatch):
    queue = _script("isbi2015_queue")
    runs = tmp_path / "runs"
    # Every fold's four cross-validation runs are queued, each run once.
    assert len(set(queue.PLAN)) == len(queue.PLAN)
    for fold in range(5):
        for kind in ("scn", "local_unet", "scn_member2", "local_unet_member2"):
            assert (kind, fold) in queue.PLAN
    finished = runs / "scn_fold1"
    finished.mkdir(parents=True)
    (finished / "model.keras").write_text("")
    half_written = runs / "scn_fold0"  # Killed between its metrics and its model.
    (half_written / "trained.weights.h5").parent.mkdir(parents=True)
    (half_written / "metrics.json").write_text("{}")
    (half_written / "trained.weights.h5").write_text("")
    partial = runs / "local_unet_fold1"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "latest.weights.h5").write_text("")
    (partial / "history.json").write_text(json.dumps({"loss": [3.0, 2.0, 1.5]}))
    (partial / "training_seconds.json").write_text(json.dumps({"seconds": 5400}))
    held = queue._try_lock(str(runs), "scn_flip", 1)  # another worker trains it
    # Records committed from a lost machine: fold 0's flip pair is not needed again; fold 2's
    # pair is recorded but its runs are members of fold 2's ensemble too, not recorded yet.
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    for configuration, fold in (("flip", 0), ("pair", 2)):
        for path in queue.record_paths(str(records_dir), configuration, fold):
            open(path, "w").close()
    lines = {line.split(" | ")[1]: line.split(" | ", 2)[2] for line in
             queue.status_lines(str(runs), records_dir=str(records_dir))[2:]}
    assert lines["scn_flip_fold0"] == "recorded | 0/40 |  |"
    assert lines["local_unet_flip_fold0"] == "recorded | 0/40 |  |"
    assert lines["scn_fold2"] == "waiting | 0/40 |  |"
    assert len(lines) == len(queue.PLAN)
    assert lines["scn_fold1"] == "finished | 40/40 |  |"
    assert lines["local_unet_fold1"] == "partial | 3/40 | 1.5 |"
    assert lines["scn_flip_fold1"] == "training | 0/40 |  |"
    assert lines["local_unet_flip_fold1"] == "waiting | 0/40 |  |"
    assert lines["scn_fold0"] == "partial | 0/40 |  |"
    resumed = queue.train_command("scn", 0, str(runs), "/data", "/mean")
    assert resumed[-1] == "--resume"  # Its trained weights are kept until the model is written.
    assert queue._try_lock(str(runs), "scn_flip", 1) is None
    command = queue.train_command("local_unet", 1, str(runs), "/data", "/mean")
    assert command[command.index("--dataset-root") + 1] == "/data"
    assert command[-1] == "--resume" and "--flip" not in command
    command = queue.train_command("scn_meanlabels", 0, str(runs), "/data", "/mean")
    assert command[command.index("--dataset-root") + 1] == "/mean" and "--resume" not in command
    assert command[command.index("--grid-shape") + 1] == "192,160"
    # A worker takes the runs in order, skipping finished and locked ones, until none is left.
    trained = []

    def fake_train(kind, fold, args, log, lock):
        assert queue._try_lock(str(runs), kind, fold) is None  # Held while it trains.
        trained.append((kind, fold))
        (runs / f"{kind}_fold{fold}").mkdir(exist_ok=True)
        (runs / f"{kind}_fold{fold}" / "model.keras").write_text("")
        return 1 if kind == "scn_member2" and fold == 4 else 0

    recorded = []
    monkeypatch.setattr(queue, "_train_one", fake_train)
    monkeypatch.setattr(queue, "_record", lambda fold, args, log: recorded.append(fold))
    args = type("Args", (), {"runs_dir": str(runs), "logs": str(tmp_path),
                             "records_dir": str(records_dir)})()
    failed = set()
    queue.worker(1, args, failed, rescan_seconds=0.0)
    assert trained == [run for run in queue.PLAN if run not in (
        ("scn", 1), ("scn_flip", 1), ("scn_flip", 0), ("local_unet_flip", 0))]
    assert failed == {("scn_member2", 4)}
    # The fold's records after every run that finished, none after the failed one.
    assert recorded == [fold for kind, fold in trained if (kind, fold) != ("scn_member2", 4)]
    held.close()


def test_fold_model_arguments_take_several_folds_and_fill_run_folders(tmp_path, monkeypatch):
    import argparse

    from keraslm.experiments import isbi2015 as experiment

    parser = argparse.ArgumentParser()
    experiment.add_fold_model_arguments(parser, several_folds=True)
    args = parser.parse_args(["--global", "r/scn_fold{fold}", "--refine", "r/unet_fold{fold}",
                              "--fold", "0,1", "--output-dir", str(tmp_path)])
    assert args.fold == [0, 1]
    for bad in ("0,0", "0,x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--global", "g", "--fold", bad, "--output-dir", str(tmp_path)])
    loaded = []
    monkeypatch.setattr("keraslm.prediction.load_detector", loaded.append)
    monkeypatch.setattr("keraslm.prediction.combine_detectors", lambda detectors: "combined")
    monkeypatch.setattr(experiment, "load_dataset", lambda name, root: "dataset")
    monkeypatch.setattr("keraslm.data.select_split",
                        lambda dataset, fold, num_folds, seed: (f"train{fold}", f"test{fold}"))
    runs, detector, _, training, held_out = experiment.fold_model(args, 1)
    assert runs == ["r/scn_fold1", "r/unet_fold1"] and (training, held_out) == ("train1", "test1")
    assert loaded == [os.path.join("r/scn_fold1", "model.keras"),
                      os.path.join("r/unet_fold1", "model.keras")]
    assert args.global_runs == "r/scn_fold{fold}"  # The parsed arguments stay templates.


@pytest.mark.slow
@needs_isbi
def test_isbi2015_records_keep_the_held_out_predictions_and_make_the_tables(tmp_path):
    """The records of quick cross-validation runs: one per configuration and fold whose runs
    finished, not written again for the same models; the tables from the records alone give
    the CV driver's figures, and a mean-label configuration its comparison."""
    import shutil

    import numpy as np

    output = _isbi2015_quick(tmp_path, "--architectures", "scn", "--ensemble-grid-shape", "40,32",
                             "--ensemble-local-elastic-mm", "2")
    records = _script("isbi2015_records")
    runs, record_dir = output / "runs", tmp_path / "records"
    for fold in (0, 1):  # A "mean-label" pair: the senior pair's models again.
        for kind in ("scn", "local_unet"):
            shutil.copytree(runs / f"{kind}_fold{fold}", runs / f"{kind}_meanlabels_fold{fold}")
    common = ["--runs-dir", str(runs), "--records-dir", str(record_dir), "--dataset-root",
              ISBI_ROOT]
    assert records.main(["save", *common]) == 0
    names = sorted(os.listdir(record_dir))
    assert names == sorted(f"{c}_fold{f}.{e}" for c in ("pair", "ensemble", "meanlabels")
                           for f in (0, 1) for e in ("npz", "json"))
    stamps = {name: os.stat(record_dir / name).st_mtime_ns for name in names}
    assert records.main(["save", *common]) == 0  # Same models: nothing written again.
    assert {name: os.stat(record_dir / name).st_mtime_ns for name in names} == stamps
    with np.load(record_dir / "ensemble_fold1.npz") as stored:
        assert stored["refined_mm"].shape == stored["senior_mm"].shape == (2, 19, 2)
        assert stored["junior_mm"].shape == (2, 19, 2)
        assert np.all((stored["second_peak"] >= 0) & (stored["second_peak"] <= 1))
        members = stored["member_global_mm"], stored["member_refined_mm"]
    with np.load(record_dir / "pair_fold1.npz") as stored:
        assert "member_refined_mm" not in stored.files
        pair = stored["global_mm"], stored["refined_mm"]
    # Member 0 is the pair (scn_fold1 refined by local_unet_fold1); member 1 other runs.
    for member, pair_points in zip(members, pair):
        assert member.shape == (2, 2, 19, 2)
        np.testing.assert_allclose(member[0], pair_points, atol=1e-3)
        assert np.abs(member[1] - member[0]).max() > 1e-3
    described = json.loads((record_dir / "ensemble_fold0.json").read_text())
    assert [r["run"] for r in described["runs"]] == [
        "scn_fold0", "scn_member2_fold0", "local_unet_fold0", "local_unet_member2_fold0"]
    assert all(len(r["model_sha256"]) == 64 for r in described["runs"])
    table_dir = tmp_path / "table"
    assert records.main(["table", "--records-dir", str(record_dir), "--output-dir",
                         str(table_dir)]) == 0
    results = json.loads((table_dir / "results.json").read_text())
    driver = json.loads((output / "results.json").read_text())
    for configuration, driver_label in (
            ("pair", "SpatialConf-Net + local U-Net"),
            ("ensemble", "SpatialConf-Net x2 + local U-Net x2 (ensemble)")):
        for stage, suffix in (("refined", ""), ("blended", ", blended")):
            mine = [row for row in results["configurations"][configuration]["per_fold"]
                    if row["method"].endswith(f", {stage}, fold 1")]
            theirs = [row for row in driver["per_fold"]
                      if row["method"] == f"{driver_label}{suffix}, fold 1 (2 images)"]
            assert mine[0]["summary"]["mean_mm"] == pytest.approx(
                theirs[0]["summary"]["mean_mm"], abs=1e-3), (configuration, stage)
    assert results["mean_labels"]["folds"] == [0, 1]
    same = results["mean_labels"]["mre_mm"]
    assert same["senior"] == same["mean of both"]  # The same models under both names.
    table = (table_dir / "table.md").read_text()
    assert "| sella | " in table and "+0.00 |" in table
    assert "No flag figures: fitting a shape vote needs" in table  # 2 images per fold.
    with pytest.raises(SystemExit, match="no records"):
        records.main(["table", "--records-dir", str(tmp_path / "none"), "--output-dir",
                      str(tmp_path / "t2")])



def test_calibration_from_records_refits_weights_damped_heatmap_and_vote(tmp_path):
    """The shipped calibration refitted on two folds' records: blend weights, the heatmap
    calibration damped by the second peak, a shape vote, cross-fitted figures; without the
    second peak when its power is 0; one fold is not enough."""
    import numpy as np

    from keraslm.calibration import check_calibration

    records = _script("isbi2015_records")
    rng = np.random.default_rng(0)
    names = [f"l{i}" for i in range(5)]
    mean_shape = rng.uniform(0, 100, (5, 2))
    by_fold = {}
    for fold in (0, 1):
        truth = mean_shape + rng.normal(0, 3, (12, 5, 2))
        second_peak = rng.uniform(0.1, 0.9, (12, 5))
        noise = rng.normal(0, 1, (12, 5, 2)) * (1 + 4 * second_peak[..., None])
        by_fold[fold] = ({"ids": np.arange(12) + 12 * fold, "senior_mm": truth,
                          "global_mm": truth + rng.normal(0, 2, truth.shape),
                          "refined_mm": truth + noise, "confidence": rng.uniform(20, 90, (12, 5)),
                          "spread_mm": rng.uniform(0.5, 2, (12, 5)), "second_peak": second_peak},
                         {"runs": []})
    shapes = mean_shape + rng.normal(0, 3, (40, 5, 2))
    calibration, quality = records.calibration_from_records(by_fold, names, shapes, source="x")
    check_calibration(calibration, names)
    assert calibration["second_peak_power"] == 2.0 and len(calibration["local_weight"]) == 5
    assert calibration["shape_vote"]["margin"] == 2.0 and calibration["source"] == "x"
    assert calibration["shape_vote"]["num_shapes"] == 40
    assert quality["folds"] == [0, 1] and quality["num_points"] == 2 * 12 * 5
    assert 0 <= quality["flagged_fraction"] <= 1 and quality["mre_mm"] > 0
    assert 0 <= quality["large_caught"] <= quality["num_large"]
    assert 0 <= quality["far_caught"] <= quality["num_far"]
    assert quality["large_caught"] <= quality["large_in_top_15_percent"] or (
        quality["flagged_fraction"] > 0.15)
    assert 0 < quality["flagged_for_60_percent"] <= 1
    assert len(quality["far_points"]) == quality["num_far"]
    # Other thresholds: a lower one flags more and catches at least as much.
    points = quality["operating_points"]
    assert [p["flag_mm"] for p in points] == list(records.OPERATING_FLAG_MM)
    at_default = next(p for p in points if p["flag_mm"] == 2.5)
    assert at_default["flagged_fraction"] == quality["flagged_fraction"]
    assert at_default["large_caught"] == quality["large_caught"]
    for lower, higher in zip(points, points[1:]):
        assert lower["flagged_fraction"] >= higher["flagged_fraction"]
        assert lower["large_caught"] >= higher["large_caught"]
    assert points[0]["flagged_fraction"] > points[-1]["flagged_fraction"]
    assert all(f["error_mm"] > 10 and "junior_to_answer_mm" not in f
               for f in quality["far_points"])  # These records hold no junior landmarks.
    plain, plain_quality = records.calibration_from_records(by_fold, names, shapes,
                                                            second_peak_power=0)
    assert "second_peak_power" not in plain
    # The errors grow with the second peak: damping by it ranks them better.
    assert quality["spearman"] > plain_quality["spearman"]
    with pytest.raises(SystemExit, match="two recorded folds"):
        records.calibration_from_records({0: by_fold[0]}, names, shapes)
    # Blend weights kept (the shipped model's points unchanged): every fold blended with them,
    # the MRE that of those points; the wrong number of weights is refused.
    given = [0.0, 0.25, 0.5, 0.75, 1.0]
    kept, kept_quality = records.calibration_from_records(by_fold, names, shapes,
                                                          local_weight=given)
    assert kept["local_weight"] == given and kept_quality["blend_weights"] == "kept"
    assert quality["blend_weights"] == "fitted"
    weight = np.asarray(given)[:, None]
    kept_points = np.concatenate([weight * a["refined_mm"] + (1 - weight) * a["global_mm"]
                                  for a, _ in by_fold.values()])
    truth = np.concatenate([a["senior_mm"] for a, _ in by_fold.values()])
    assert kept_quality["mre_mm"] == pytest.approx(
        np.linalg.norm(kept_points - truth, axis=-1).mean())
    assert kept_quality["mre_mm"] != pytest.approx(quality["mre_mm"])
    with pytest.raises(SystemExit, match="5 weights expected"):
        records.calibration_from_records(by_fold, names, shapes, local_weight=[0.5] * 4)
    # The tables from record files: the pair's rows and flag over both folds, and a mean-label
    # pair with the same predictions compares equal.
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    far_off = {key: value.copy() for key, value in by_fold[0][0].items()}
    for key in ("global_mm", "refined_mm"):  # One point 30 mm off in both stages.
        far_off[key][0, 0] += 30.0
    for configuration in ("pair", "meanlabels"):
        for fold, arrays in ((0, far_off), (1, by_fold[1][0])):
            npz_path, json_path = records.record_paths(str(record_dir), configuration, fold)
            np.savez(npz_path, **arrays, junior_mm=arrays["senior_mm"] + 1.0)
            with open(json_path, "w", encoding="utf-8") as handle:
                json.dump({"landmark_names": names, "machine": "CPU test", "runs": [
                    {"run": f"scn_fold{fold}", "training_seconds": 3600, "precision": "float32",
                     "model_sha256": "0" * 64}]}, handle)
    assert records.main(["table", "--records-dir", str(record_dir), "--output-dir",
                         str(tmp_path / "table")]) == 0
    results = json.loads((tmp_path / "table" / "results.json").read_text())
    pair = results["configurations"]["pair"]
    assert pair["folds"] == [0, 1] and [row["method"] for row in pair["rows"]] == [
        "pair, global stage (folds 0, 1)", "pair, refined (folds 0, 1)",
        "pair, blended (folds 0, 1)"]
    assert set(pair["flag"]) == {"heatmap x (1 - second peak)^2, shape vote",
                                 "heatmap, shape vote (version 8's rule)"}
    mean_labels = results["mean_labels"]["mre_mm"]
    assert mean_labels["senior"] == mean_labels["mean of both"]
    assert mean_labels["senior"]["junior"] > mean_labels["senior"]["senior"]
    table = (tmp_path / "table" / "table.md").read_text()
    assert "| 1 | scn_fold1 | 1.00 | float32 | CPU test |" in table
    far = pair["flag"]["heatmap x (1 - second peak)^2, shape vote"]["far_points"]
    # The point 30 mm off, with the junior's landmarks (senior + 1 mm in x and y).
    assert [(f["image"], f["landmark"]) for f in far] == [("0", "l0")]
    assert far[0]["error_mm"] > 10 and far[0]["junior_to_answer_mm"] > 10
    assert far[0]["junior_to_senior_mm"] == pytest.approx(2 ** 0.5)
    assert "| 0 | l0 | " in table and "junior to the answer mm" in table
    assert "| flag above mm | flagged % |" in table and "| 2.5 | " in table
    # Version 9's refit (isbi2015_shipped.py --calibration-records) reads the ensemble's
    # records: the same calibration, with the comparison without the second peak.
    from types import SimpleNamespace

    shipped = _script("isbi2015_shipped")
    spec = SimpleNamespace(landmark_names=tuple(names), calibration={"local_weight": given})
    dataset = SimpleNamespace(records=[SimpleNamespace(points_mm=shape) for shape in shapes])
    args = SimpleNamespace(calibration_records=str(record_dir), shape_vote_margin=2.0,
                           second_peak_power=2.0, source="v8", refit_blend_weights=True)
    with pytest.raises(SystemExit, match="0 fold"):
        shipped._refit_calibration(args, spec, dataset)
    for fold, (arrays, _) in by_fold.items():
        npz_path, json_path = records.record_paths(str(record_dir), "ensemble", fold)
        np.savez(npz_path, **arrays)
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump({"landmark_names": names, "runs": [{"run": f"scn_fold{fold}"}]}, handle)
    refit = shipped._refit_calibration(args, spec, dataset)
    assert refit["calibration"]["second_peak_power"] == 2.0
    assert refit["calibration"]["local_weight"] == calibration["local_weight"]
    assert refit["calibration"]["knots"] == calibration["knots"]
    assert "scn_fold0; scn_fold1" in refit["calibration"]["source"]
    assert set(refit["qualities"]) == {"second_peak_power 2", "second_peak_power 0"}
    assert refit["qualities"]["second_peak_power 0"]["spearman"] == plain_quality["spearman"]
    assert refit["text"].count("| second_peak_power ") == 2
    assert "blend weights refitted" in refit["text"]
    # By default the source's blend weights are kept; a source without them is refused.
    args.refit_blend_weights = False
    kept_refit = shipped._refit_calibration(args, spec, dataset)
    assert kept_refit["calibration"]["local_weight"] == given
    assert kept_refit["calibration"]["knots"] == kept["knots"]
    assert "blend weights kept" in kept_refit["text"]
    with pytest.raises(SystemExit, match="no blend weights"):
        shipped._refit_calibration(args, SimpleNamespace(landmark_names=tuple(names),
                                                         calibration=None), dataset)
    with pytest.raises(SystemExit, match="has landmarks"):
        shipped._refit_calibration(args, SimpleNamespace(landmark_names=("a",) * 5), dataset)
    # What the flag's signals allow, from the same records (pair and mean-label pair).
    signals = _script("isbi2015_flag_signals")
    assert signals.main(["--records-dir", str(record_dir), "--output-dir",
                         str(tmp_path / "signals")]) == 0
    ranked = json.loads((tmp_path / "signals" / "results.json").read_text())
    assert ranked["folds"] == [0, 1] and ranked["num_far"] >= 1  # The point 30 mm off.
    assert "the two pairs apart (mm)" in ranked["scores"]
    for figures in ranked["scores"].values():
        assert 0 <= figures["large_in_budget"] <= ranked["num_large"]
        assert 0 < figures["flagged_for_60_percent"] <= 1
    # The point 30 mm off is in the shape vote's and the expected error's top 15 %.
    assert ranked["scores"]["expected error (heatmap x (1 - second peak)^2, shape vote)"][
        "far_in_budget"] == ranked["num_far"]
    # The ensemble's answers with its members one by one: on one point the members are 30 mm
    # apart and their mean (the answer) 15 mm off; the members' disagreement ranks it first.
    for fold, (arrays, _) in by_fold.items():
        npz_path, _ = records.record_paths(str(record_dir), "ensemble", fold)
        ensemble = {key: value.copy() for key, value in arrays.items()}
        member2 = ensemble["refined_mm"].copy()
        if fold == 0:
            for key in ("global_mm", "refined_mm"):
                ensemble[key][1, 2] += [15.0, 0.0]
            member2[1, 2] += [30.0, 0.0]
        ensemble["member_refined_mm"] = np.stack([arrays["refined_mm"], member2])
        ensemble["member_global_mm"] = np.stack([arrays["global_mm"], member2])
        np.savez(npz_path, **ensemble)
    assert signals.main(["--records-dir", str(record_dir), "--configuration", "ensemble",
                         "--output-dir", str(tmp_path / "signals_ensemble")]) == 0
    ranked = json.loads((tmp_path / "signals_ensemble" / "results.json").read_text())
    assert ranked["configuration"] == "ensemble" and ranked["num_far"] >= 1
    assert "the two pairs apart (mm)" not in ranked["scores"]
    apart = ranked["scores"]["the members apart (mm, mean distance from their mean)"]
    assert apart["far_in_budget"] == ranked["num_far"]
    with pytest.raises(SystemExit, match="1 fold"):
        os.remove(records.record_paths(str(record_dir), "pair", 1)[0])
        signals.main(["--records-dir", str(record_dir), "--output-dir", str(tmp_path / "s2")])


def test_flag_signals_ranking_figures():
    """The top-15 % counts and the share to flag for 60 % of the errors > 4 mm."""
    import numpy as np

    signals = _script("isbi2015_flag_signals")
    errors = np.array([[12.0, 5.0, 0.5, 0.4, 4.5, 0.3, 0.2, 0.1, 0.2, 0.3]])
    score = np.array([[9.0, 1.0, 8.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # Top 15 % of 10 = 1 landmark: the 12 mm error. 60 % of the 3 errors > 4 mm = 2: flag the
    # 12 mm, the 0.5 mm and the 4.5 mm ones, 30 %.
    assert signals.ranking_figures(score, errors) == (1, 1, 0.3)
