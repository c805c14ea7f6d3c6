"""Experiments as resumable batches of training runs: a `Run` per training, `execute` (train
what has not finished, resume what was interrupted), the point errors each run keeps in its
folder, pooling by table row, and the table.md / results.json every experiment ends with.
"""
import dataclasses
import json
import os
import time

import numpy as np

from keraslm.errors import KeraslmError
from keraslm.evaluation import PointErrors, evaluate_runs, point_errors, pool
from keraslm.evaluation.tables import json_number
from keraslm.files import atomic_path, read_json, write_json, write_text
from keraslm.run_folder import METRICS_FILE as RUN_METRICS_FILE, RunFolder
from keraslm.training import TrainingConfig, train

#: Table labels of the architectures, as in the paper.
METHOD_LABELS = {
    "downsampling": "Downsampling-Net",
    "convonly": "ConvOnly-Net",
    "unet": "U-Net",
    "scn": "SpatialConf-Net",
    "scn2019": "SCN (2019)",
}


#: The paper's four architectures, in its table order.
PAPER_ARCHITECTURES = ("downsampling", "convonly", "unet", "scn")


ERRORS_FILE = "errors_mm.npy"


METRICS_FILE = RUN_METRICS_FILE  # The run folder's (`keraslm.run_folder`).


#: Training wall time of a finished run (of the invocation that finished it).
TIMING_FILE = "training_seconds.json"


TABLE_FILE = "table.md"


RESULTS_FILE = "results.json"


CUMULATIVE_PLOT = "cumulative_error.png"


STAGE_POINTS_FILE = "stage_points_mm.npz"
ENSEMBLE_STAGE_POINTS_FILE = "stage_points_ensemble_mm.npz"


@dataclasses.dataclass
class Run:
    """One training run of an experiment.

    Args:
        group: str. Row group, e.g. "full" or "reduced" ("" when the table has none).
        architecture: str. Model architecture (row label via `METHOD_LABELS`).
        config: TrainingConfig. Its `output_dir` is the run folder.
    """

    group: str
    architecture: str
    config: TrainingConfig


def write_json_numbers(path, payload):
    write_json(path, payload, default=_json_default)


def write_experiment(output_dir, lines, payload, script, argv, table="table.md",
                     results="results.json"):
    """An experiment script's outputs, each written atomically into `output_dir`: its table
    (`lines` and a last line with the command that made it: `python <script> <argv>`) and its
    numbers (`payload`, JSON). Returns the table's text."""
    import shlex

    text = "\n".join(list(lines) + ["", f"Command: `python {script} {shlex.join(argv)}`"]) + "\n"
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, table), text)
    write_json_numbers(os.path.join(output_dir, results), payload)
    return text


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_finished(run_dir):
    """bool. Whether the run folder holds its model - the last thing a finished training writes
    (`RunFolder.is_finished`; its metrics.json comes just before)."""
    return RunFolder(run_dir).is_finished()


def execute(runs, log=None):
    """Trains every run that has not finished yet; finished runs are skipped, interrupted ones
    resumed from their checkpoints.

    Args:
        runs: sequence of Run.
        log: callable(str), optional. Receives one line per run (and training progress).

    Returns:
        list of dict, one per run: `run` (folder), `group`, `architecture`, `status`
        ("trained", "resumed" or "skipped"), `seconds` (training wall time of this invocation, 0
        if skipped) and `recorded_seconds` (the training time kept in the run's folder by the
        invocation that finished it; None for runs finished before this was recorded). Time
        spent in an earlier, interrupted attempt of a resumed run is not counted.
    """
    log = log or (lambda message: None)
    records = []
    for number, run in enumerate(runs, 1):
        run_dir = run.config.output_dir
        label = f"run {number}/{len(runs)} {os.path.basename(run_dir)}"
        if run_finished(run_dir):
            log(f"{label}: finished before, skipped")
            records.append({"run": run_dir, "group": run.group, "architecture": run.architecture,
                            "status": "skipped", "seconds": 0.0,
                            "recorded_seconds": recorded_training_seconds(run_dir)})
            continue
        resume = RunFolder(run_dir).has_checkpoints()
        log(f"{label}: {'resuming' if resume else 'training'}")
        result = train(run.config.replace(resume=resume), log=log)
        with atomic_path(os.path.join(run_dir, ERRORS_FILE), suffix=".npy") as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, result.errors_mm)
        write_json_numbers(os.path.join(run_dir, TIMING_FILE), {"seconds": result.seconds})
        log(f"{label}: {result.seconds:.1f} s, median {result.summary['median_mm']:.2f} mm")
        records.append({"run": run_dir, "group": run.group, "architecture": run.architecture,
                        "status": "resumed" if resume else "trained", "seconds": result.seconds,
                        "recorded_seconds": result.seconds})
    return records


def recorded_training_seconds(run_dir):
    """float or None. The training wall time kept in a run folder (`TIMING_FILE`), if any."""
    path = os.path.join(run_dir, TIMING_FILE)
    if not os.path.isfile(path):
        return None
    return float(read_json(path, f"{path}: no training time record")["seconds"])


def run_errors(run_dir, landmark_names):
    """PointErrors of a finished run on its held-out images (mm).

    Args:
        run_dir: str. Finished run folder.
        landmark_names: sequence of str.
    """
    errors_path = os.path.join(run_dir, ERRORS_FILE)
    if not os.path.isfile(errors_path):
        return evaluate_runs([run_dir]).errors
    return stored_errors(errors_path, run_dir, landmark_names)


def stored_errors(errors_path, run_dir, landmark_names):
    """PointErrors from a saved `(validation images, landmarks)` error array of a run, in the
    validation order of its metrics.json."""
    with open(os.path.join(run_dir, METRICS_FILE), encoding="utf-8") as handle:
        ids = json.load(handle)["validation_ids"]
    errors = np.load(errors_path)
    if errors.shape != (len(ids), len(landmark_names)):
        raise KeraslmError(
            f"{errors_path}: expected errors of shape {(len(ids), len(landmark_names))} "
            f"(validation images, landmarks). Received: {errors.shape}"
        )
    missing = np.isnan(errors)
    return PointErrors(tuple(ids), tuple(landmark_names), errors, missing, np.zeros_like(missing),
                       np.zeros(len(ids), dtype=bool), np.ones(len(ids)))


def pooled_errors(runs, landmark_names):
    """dict (group, architecture) -> PointErrors pooled over that row's runs, in run order."""
    parts = {}
    for run in runs:
        parts.setdefault((run.group, run.architecture), []).append(
            run_errors(run.config.output_dir, landmark_names))
    return {key: pool(value) for key, value in parts.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class StagePoints:
    """A coarse-to-fine run pair's held-out predictions: both stages' points and the truth,
    `(num_images, num_landmarks, ndim)` physical mm, in the order of the global run's held-out
    split (`keraslm.evaluation.run_test_set`)."""

    ids: tuple
    global_mm: np.ndarray
    refined_mm: np.ndarray
    ground_truth_mm: np.ndarray


def _trained_model(run_dir):
    """What identifies a run's trained model: its folder and the model file's size and
    modification time (a run trained again in the same folder is another model)."""
    model = RunFolder(run_dir).model_path
    if not os.path.isfile(model):
        raise KeraslmError(f"{run_dir}: no {os.path.basename(model)}; the run has not finished")
    status = os.stat(model)
    return {"run": os.path.abspath(run_dir),
            "model_bytes": status.st_size, "model_mtime_ns": status.st_mtime_ns}


def stage_points(global_dir, local_dir, batch_size=4):
    """StagePoints of a global run refined by a local run on the global run's held-out images;
    predicted once (`keraslm.evaluation.evaluate_runs`, the global stage alone and refined) and
    kept as `<global_dir>/stage_points_mm.npz`, with what identifies both trained models beside
    it (`.json`): a run trained again, or another local run, is evaluated again.

    Lists of run folders make an ensemble (`keraslm.prediction.load_predictor`: the global
    points are the members' mean, the refined ones the mean of the local members'); kept as
    `<first global_dir>/stage_points_ensemble_mm.npz`."""
    ensemble = isinstance(global_dir, (list, tuple)) or isinstance(local_dir, (list, tuple))
    if ensemble:
        global_dir, local_dir = (
            [list(d) if isinstance(d, (list, tuple)) else [d] for d in (global_dir, local_dir)])
        path = os.path.join(global_dir[0], ENSEMBLE_STAGE_POINTS_FILE)
        key = {"global": [_trained_model(d) for d in global_dir],
               "local": [_trained_model(d) for d in local_dir]}
    else:
        path = os.path.join(global_dir, STAGE_POINTS_FILE)
        key = {"global": _trained_model(global_dir), "local": _trained_model(local_dir)}
    source = path + ".json"
    if os.path.isfile(path) and os.path.isfile(source):
        with open(source, encoding="utf-8") as handle:
            if json.load(handle) == key:
                with np.load(path) as stored:
                    return StagePoints(tuple(str(i) for i in stored["ids"]), stored["global_mm"],
                                       stored["refined_mm"], stored["ground_truth_mm"])
    global_only = evaluate_runs([global_dir], batch_size=batch_size)
    refined = evaluate_runs([global_dir], refine_runs=[local_dir], batch_size=batch_size)
    if global_only.ids != refined.ids:
        raise KeraslmError(f"{global_dir}: the global stage alone and refined by {local_dir} "
                           "were evaluated on different images")
    points = StagePoints(refined.ids, global_only.predicted_mm, refined.predicted_mm,
                         refined.ground_truth_mm)
    with atomic_path(path, suffix=".npz") as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, ids=np.array(points.ids), global_mm=points.global_mm,
                     refined_mm=points.refined_mm, ground_truth_mm=points.ground_truth_mm)
    write_json_numbers(source, key)
    return points


def refined_run_errors(global_dir, local_dir, landmark_names, batch_size=4):
    """PointErrors of a global run refined by a local run on the global run's held-out images
    (from `stage_points`)."""
    points = stage_points(global_dir, local_dir, batch_size)
    return point_errors(points.refined_mm, points.ground_truth_mm, points.ids, landmark_names)


def blended_fold_errors(parts, landmark_names):
    """Per fold, the PointErrors of the per-landmark blend of the two stages
    (`keraslm.calibration.blend_stages`) with weights fitted on the OTHER folds' held-out
    predictions (`keraslm.calibration.cross_fitted_blend` by fold) - what the calibration's
    `local_weight` does on images it was not fitted on - and the weights fitted on all folds.

    Args:
        parts: sequence of StagePoints, one per fold (at least 2).
        landmark_names: sequence of str.

    Returns:
        (list of PointErrors, np.ndarray `(num_landmarks,)` weights of the refined point).
    """
    blended, weights = blended_fold_points(parts)
    return [point_errors(points, part.ground_truth_mm, part.ids, landmark_names)
            for points, part in zip(blended, parts)], weights


def blended_fold_points(parts):
    """Per fold, the blended points `(num_images, num_landmarks, ndim)` mm with weights fitted
    on the OTHER folds (see `blended_fold_errors`), and the weights fitted on all folds.

    Args:
        parts: sequence of StagePoints, one per fold (at least 2).
    """
    from keraslm.calibration import cross_fitted_blend, fit_local_weight

    if len(parts) < 2:
        raise KeraslmError("blending fitted on the other folds needs at least 2 folds")
    stacked = {field: np.concatenate([getattr(part, field) for part in parts])
               for field in ("global_mm", "refined_mm", "ground_truth_mm")}
    groups = np.repeat(np.arange(len(parts)), [len(part.ids) for part in parts])
    blended = cross_fitted_blend(stacked["global_mm"], stacked["refined_mm"],
                                 stacked["ground_truth_mm"], groups=groups)
    return ([blended[groups == number] for number in range(len(parts))],
            fit_local_weight(stacked["global_mm"], stacked["refined_mm"],
                             stacked["ground_truth_mm"]))


def size_text(shape):
    return "x".join(str(int(d)) for d in shape)


def clean_summary(summary):
    return {key: json_number(value) if isinstance(value, float) else value
            for key, value in summary.items()}


def _settings_text(settings):
    return "\n".join(f"- {key}: {value}" for key, value in settings.items())


def finish(output_dir, title, settings, tables, records, start, extra=None):
    """Writes table.md and results.json; returns the Markdown text."""
    wall = time.perf_counter() - start
    trained = sum(r["seconds"] for r in records)
    timing = (f"wall time of this invocation: {wall:.0f} s ({wall / 3600:.2f} h); training time of the "
              f"runs trained now: {trained:.0f} s; {sum(r['status'] == 'skipped' for r in records)} of "
              f"{len(records)} runs were finished before and skipped")
    recorded = [r["recorded_seconds"] for r in records if r.get("recorded_seconds") is not None]
    if recorded:
        total = sum(recorded)
        timing += (f"\n\ntotal training time recorded in the run folders: {total:.0f} s "
                   f"({total / 3600:.2f} h) over {len(recorded)} of {len(records)} runs")
    text = f"# {title}\n\nSettings:\n{_settings_text(settings)}\n\n{tables}\n\n{timing}\n"
    write_text(os.path.join(output_dir, TABLE_FILE), text)
    write_json_numbers(os.path.join(output_dir, RESULTS_FILE), {
        "title": title, "settings": settings, "wall_seconds": wall, "runs": records, **(extra or {}),
    })
    return text


def check_architectures(architectures):
    unknown = [a for a in architectures if a not in METHOD_LABELS]
    if unknown or not architectures:
        raise KeraslmError(
            f"`architectures` must be a non-empty list of {', '.join(METHOD_LABELS)}. "
            f"Received: {list(architectures)}"
        )


def check_parts(name, value, maximum):
    if value is not None and not 1 <= value <= maximum:
        raise KeraslmError(f"`{name}` must lie in [1, {maximum}]. Received: {name}={value}")


def base_config(dataset, dataset_root, architecture, grid_shape, steps, batch_size, preset,
                 overrides, jit, output_dir, seed):
    return TrainingConfig(
        dataset=dataset, dataset_root=dataset_root, architecture=architecture,
        model_preset=preset, grid_shape=tuple(grid_shape), steps=steps,
        steps_per_epoch=max(1, min(100, steps)), batch_size=batch_size,
        model_overrides=dict(overrides or {}), jit=jit, output_dir=output_dir, seed=seed,
    )


def grid_spacing(run_dir):
    """float. The grid spacing (mm) a finished run recorded in its config.json."""
    with open(RunFolder(run_dir).config_path, encoding="utf-8") as handle:
        return float(json.load(handle)["grid_spacing"][0])


def json_rows(rows):
    return [{**row, "summary": clean_summary(row["summary"])} for row in rows]
