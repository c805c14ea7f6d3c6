"""The paper's experiments as resumable batches of training runs, pooled into Markdown tables.

The scripts in `experiments/` parse their arguments and call one function here:

- `table1(...)`: Payer et al. 2016, Table 1 on the 2D phantom: the four architectures,
  k-fold cross-validation, the full training set and a reduced one (heavier augmentation).
- `table2(...)`: Table 2 on the 3D phantom: the four architectures, repeated random splits.
- `isbi2015_cv(...)`: k-fold cross-validation of SCN and U-Net on the ISBI 2015 training
  images: MRE +- SD, SDR at 2 / 2.5 / 3 / 4 mm, per-landmark table, cumulative error curve.

Each writes into its output folder:

    runs/<group>_<architecture>_<part>/   one training run folder each (`keraslm.training.train`)
    table.md                             the generated table(s) with the settings and wall time
    results.json                         all numbers, the settings, per-run timings, wall time

A run whose folder holds `metrics.json` has finished and is skipped when the experiment is run
again; a run interrupted while training (checkpoints, no metrics.json) is resumed. The point
errors of each run (`errors_mm.npy`, in the validation order of its `metrics.json`) are kept in
its folder, so finished runs are pooled without predicting again; if that file is missing the
run is evaluated again with `keraslm.evaluation.evaluate_runs`.

Errors are pooled over the runs of one table row (all folds, or all random splits), as in the
paper, and summarised with `keraslm.evaluation.summarize` (physical mm).
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

from keraslm.datasets import load_dataset, make_phantom
from keraslm.errors import KeraslmError
from keraslm.evaluation import PointErrors, evaluate_runs, per_landmark, pool, summarize
from keraslm.evaluation.metrics import SDR_RADII_MM, sdr_key
from keraslm.evaluation.plots import plot_cumulative_error
from keraslm.metadata import MODEL_METADATA_FILE, offset_prior_mm
from keraslm.files import atomic_path, read_json, write_json, write_text
from keraslm.models import build_model
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


def _write_json(path, payload):
    write_json(path, payload, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_number(value):
    return None if value is None or not math.isfinite(value) else value


def run_finished(run_dir):
    """bool. Whether the run folder holds the metrics.json a finished training writes."""
    return os.path.isfile(os.path.join(run_dir, METRICS_FILE))


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
        resume = RunFolder(run_dir).has_checkpoints() or RunFolder(run_dir).is_finished()
        log(f"{label}: {'resuming' if resume else 'training'}")
        result = train(run.config.replace(resume=resume), log=log)
        with atomic_path(os.path.join(run_dir, ERRORS_FILE), suffix=".npy") as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, result.errors_mm)
        _write_json(os.path.join(run_dir, TIMING_FILE), {"seconds": result.seconds})
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
    return _stored_errors(errors_path, run_dir, landmark_names)


def _stored_errors(errors_path, run_dir, landmark_names):
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


def weight_ratios(architectures, ndim, num_landmarks, preset, overrides=None, reference="scn"):
    """dict architecture -> weight count relative to `reference` (the paper's #w column).

    Args:
        architectures: sequence of str.
        ndim: int.
        num_landmarks: int.
        preset: str. Model preset.
        overrides: dict or None. `build_model` overrides, as trained.
        reference: str. Architecture whose count is 1.
    """
    counts = {
        name: build_model(name, ndim, num_landmarks, preset=preset, **(overrides or {})).count_params()
        for name in {*architectures, reference}
    }
    return {name: counts[name] / counts[reference] for name in architectures}


def _size(shape):
    return "x".join(str(int(d)) for d in shape)


def sizes(architecture, ndim, num_landmarks, grid_shape, preset, overrides=None):
    """(input, target) strings like "64x64", "16x16": the network grid and heatmap sizes."""
    model = build_model(architecture, ndim, num_landmarks, preset=preset, **(overrides or {}))
    return _size(grid_shape), _size(model.output_spatial_shape(tuple(grid_shape)))


def _number(value, digits=2):
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_paper_table(rows, include_set=True, include_weights=True):
    """Markdown table with the paper's Table 1 (or, without set and #w, Table 2) columns.

    Args:
        rows: sequence of dict with `method`, `input`, `target` (str), `summary`
            (`keraslm.evaluation.summarize` output), and `set` / `weights` (float ratio) when
            included.
        include_set: bool. First column "Set" (shown on the first row of each set only).
        include_weights: bool. Last column "#w".

    Returns:
        str. The table, one line per row, no trailing newline.
    """
    header = (["Set"] if include_set else []) + [
        "Method", "Input", "Target", "Median (mm)", "Mean +- SD (mm)", "Outliers > 10 mm"
    ] + (["#w"] if include_weights else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    previous_set = None
    for row in rows:
        summary = row["summary"]
        cells = []
        if include_set:
            cells.append(row["set"] if row["set"] != previous_set else "")
            previous_set = row["set"]
        cells += [
            row["method"], row["input"], row["target"], _number(summary.get("median_mm")),
            f"{_number(summary.get('mean_mm'))} +- {_number(summary.get('std_mm'))}",
            f"{summary.get('outliers', 0)} ({_number(summary.get('outlier_percent'), 3)} %)",
        ]
        if include_weights:
            cells.append(_number(row["weights"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sdr_table(rows):
    """Markdown table: method, MRE +- SD, median, SDR at 2 / 2.5 / 3 / 4 mm, outliers > 10 mm.

    Args:
        rows: sequence of dict with `method` and `summary` (`summarize` output).
    """
    header = ["Method", "MRE +- SD (mm)", "Median (mm)"] + [
        f"SDR {r:g} mm" for r in SDR_RADII_MM] + ["Outliers > 10 mm"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        summary = row["summary"]
        lines.append("| " + " | ".join(
            [row["method"], f"{_number(summary.get('mean_mm'))} +- {_number(summary.get('std_mm'))}",
             _number(summary.get("median_mm"))]
            + [f"{_number(summary.get(sdr_key(r)), 1)} %" for r in SDR_RADII_MM]
            + [f"{summary.get('outliers', 0)} ({_number(summary.get('outlier_percent'))} %)"]
        ) + " |")
    return "\n".join(lines)


def format_landmark_table(tables):
    """Markdown per-landmark table: mean +- SD and SDR 2 mm for each method.

    Args:
        tables: dict method -> `keraslm.evaluation.per_landmark` rows (same landmarks each).
    """
    methods = list(tables)
    header = ["Landmark"] + [f"{m} {column}" for m in methods for column in ("mean +- SD (mm)", "SDR 2 mm")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, first in enumerate(tables[methods[0]]):
        cells = [first["name"]]
        for method in methods:
            row = tables[method][index]
            cells += [f"{_number(row['mean_mm'])} +- {_number(row['std_mm'])}",
                      f"{_number(row[sdr_key(2.0)], 1)} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _clean_summary(summary):
    return {key: _json_number(value) if isinstance(value, float) else value
            for key, value in summary.items()}


def _settings_text(settings):
    return "\n".join(f"- {key}: {value}" for key, value in settings.items())


def _finish(output_dir, title, settings, tables, records, start, extra=None):
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
    _write_json(os.path.join(output_dir, RESULTS_FILE), {
        "title": title, "settings": settings, "wall_seconds": wall, "runs": records, **(extra or {}),
    })
    return text


def _phantom(output_dir, ndim, num_images, image_size):
    """Dataset name or folder: the default phantom, or a smaller one generated into output_dir."""
    if num_images is None and image_size is None:
        return "phantom2d" if ndim == 2 else "phantom3d"
    folder = os.path.join(output_dir, f"phantom{ndim}d")
    make_phantom(folder, ndim=ndim, num_images=num_images, seed=0, image_size=image_size)
    return folder


def _check_architectures(architectures):
    unknown = [a for a in architectures if a not in METHOD_LABELS]
    if unknown or not architectures:
        raise KeraslmError(
            f"`architectures` must be a non-empty list of {', '.join(METHOD_LABELS)}. "
            f"Received: {list(architectures)}"
        )


def _check_parts(name, value, maximum):
    if value is not None and not 1 <= value <= maximum:
        raise KeraslmError(f"`{name}` must lie in [1, {maximum}]. Received: {name}={value}")


def _paper_rows(runs, dataset, grid_shape, preset, overrides, groups):
    errors = pooled_errors(runs, dataset.landmark_names)
    architectures = list(dict.fromkeys(run.architecture for run in runs))
    ratios = weight_ratios(architectures, dataset.ndim, dataset.num_landmarks, preset, overrides)
    rows = []
    for group in groups:
        for architecture in architectures:
            if (group, architecture) not in errors:
                continue
            input_size, target_size = sizes(architecture, dataset.ndim, dataset.num_landmarks,
                                            grid_shape, preset, overrides)
            rows.append({"set": group, "architecture": architecture,
                         "method": METHOD_LABELS[architecture], "input": input_size,
                         "target": target_size, "weights": ratios[architecture],
                         "summary": summarize(errors[(group, architecture)])})
    return rows


def _base_config(dataset, dataset_root, architecture, grid_shape, steps, batch_size, preset,
                 overrides, jit, output_dir, seed):
    return TrainingConfig(
        dataset=dataset, dataset_root=dataset_root, architecture=architecture,
        model_preset=preset, grid_shape=tuple(grid_shape), steps=steps,
        steps_per_epoch=max(1, min(100, steps)), batch_size=batch_size,
        model_overrides=dict(overrides or {}), jit=jit, output_dir=output_dir, seed=seed,
    )


def table1(output_dir, architectures=PAPER_ARCHITECTURES, grid_shape=(64, 64), steps=1000,
           batch_size=8, num_folds=3, folds=None, reduced_size=10, reduced_elastic_mm=4.0,
           preset="small", overrides=None, num_images=None, image_size=None, jit="auto",
           seed=0, log=None):
    """Table 1 analogue on the 2D phantom: architectures x {full, reduced} x folds.

    Args:
        output_dir: str. Experiment folder.
        architectures: sequence of str.
        grid_shape: tuple of int. Network grid (rows, columns) for every architecture.
        steps: int. Training steps per run.
        batch_size: int.
        num_folds: int. Cross-validation folds (the paper: 3).
        folds: int or None. Train only the first `folds` folds (smoke tests); None = all.
        reduced_size: int or None. Training images of the reduced set; None = no reduced set.
        reduced_elastic_mm: float. Elastic deformation amplitude (mm) for the reduced set.
        preset: str. Model preset.
        overrides: dict or None. Model overrides (e.g. {"filters": 4}).
        num_images, image_size: int or None. Generate a phantom of this many images / pixels
            per axis into output_dir; both None = the default phantom2d (100 images, 256x256).
        jit: str. TrainingConfig.jit.
        seed: int. Split and initialisation seed.
        log: callable(str), optional.

    Returns:
        dict with `markdown` (table.md text), `rows`, `records`.
    """
    _check_architectures(architectures)
    _check_parts("folds", folds, num_folds)
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    dataset_name = _phantom(output_dir, 2, num_images, image_size)
    dataset = load_dataset(dataset_name)
    groups = ["full"] + (["reduced"] if reduced_size else [])
    runs = []
    for group in groups:
        for architecture in architectures:
            for fold in range(folds or num_folds):
                config = _base_config(
                    dataset_name, None, architecture, grid_shape, steps, batch_size, preset,
                    overrides, jit, os.path.join(output_dir, "runs", f"{group}_{architecture}_fold{fold}"),
                    seed)
                config = config.replace(fold=fold, num_folds=num_folds)
                if group == "reduced":
                    config = config.replace(train_size=reduced_size,
                                                 elastic_mm=reduced_elastic_mm)
                runs.append(Run(group, architecture, config))
    records = execute(runs, log)
    rows = _paper_rows(runs, dataset, grid_shape, preset, overrides, groups)
    spacing = _grid_spacing(runs[0].config.output_dir)
    settings = {
        "dataset": f"{dataset.name} ({len(dataset)} images, {dataset.num_landmarks} landmarks)",
        "grid": f"{_size(grid_shape)} at {spacing:.3f} mm", "steps": steps, "batch_size": batch_size,
        "model_preset": preset, "model_overrides": overrides or {},
        "cross_validation": f"{num_folds}-fold" + (f", first {folds} fold(s) only" if folds else ""),
        "reduced_set": f"{reduced_size} training images per fold, elastic_mm={reduced_elastic_mm}"
        if reduced_size else "none", "seed": seed,
    }
    table = format_paper_table(rows)
    text = _finish(output_dir, "Table 1 analogue: 2D phantom", settings, table, records, start,
                   {"rows": _json_rows(rows)})
    return {"markdown": text, "rows": rows, "records": records}


def table2(output_dir, architectures=PAPER_ARCHITECTURES, grid_shape=(32, 64, 64), steps=1000,
           batch_size=2, num_splits=5, test_fraction=17 / 60, preset="small", overrides=None,
           num_images=None, image_size=None, jit="auto", seed=0, log=None):
    """Table 2 analogue on the 3D phantom: architectures x random splits (the paper: five
    splits of 60 images into 43 training and 17 test images).

    Args:
        output_dir: str. Experiment folder.
        architectures: sequence of str.
        grid_shape: tuple of int. Network grid (z, y, x).
        steps: int. Training steps per run.
        batch_size: int.
        num_splits: int. Random splits; split i uses seed `seed + i`.
        test_fraction: float. Held-out share (the paper: 17/60).
        preset, overrides, num_images, image_size, jit, seed, log: as in `table1` (3D phantom
            default: 40 images, 64x96x32).

    Returns:
        dict with `markdown`, `rows`, `records`.
    """
    _check_architectures(architectures)
    _check_parts("num_splits", num_splits, 1000)
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    dataset_name = _phantom(output_dir, 3, num_images, image_size)
    dataset = load_dataset(dataset_name)
    runs = []
    for architecture in architectures:
        for split in range(num_splits):
            config = _base_config(
                dataset_name, None, architecture, grid_shape, steps, batch_size, preset, overrides,
                jit, os.path.join(output_dir, "runs", f"{architecture}_split{split}"), seed + split)
            runs.append(Run("", architecture, config.replace(test_fraction=test_fraction)))
    records = execute(runs, log)
    rows = _paper_rows(runs, dataset, grid_shape, preset, overrides, [""])
    num_test = int(round(test_fraction * len(dataset)))
    settings = {
        "dataset": f"{dataset.name} ({len(dataset)} images, {dataset.num_landmarks} landmarks)",
        "grid": f"{_size(grid_shape)} (z, y, x) at {_grid_spacing(runs[0].config.output_dir):.3f} mm",
        "steps": steps, "batch_size": batch_size, "model_preset": preset,
        "model_overrides": overrides or {},
        "splits": f"{num_splits} random splits, {len(dataset) - num_test} training / {num_test} test images",
        "seed": seed,
    }
    table = format_paper_table(rows, include_set=False, include_weights=False)
    text = _finish(output_dir, "Table 2 analogue: 3D phantom", settings, table, records, start,
                   {"rows": _json_rows(rows)})
    return {"markdown": text, "rows": rows, "records": records}


def _write_fold_ids(folder, dataset, num_images, num_folds, seed):
    """Writes train/test id files of the folds of a `num_images` subset; returns their paths."""
    subset = dataset.reduced(num_images, seed=seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for fold, (train_set, test_set) in enumerate(subset.kfold(num_folds, seed=seed)):
        pair = []
        for part, ids in (("train", train_set.ids), ("test", test_set.ids)):
            path = os.path.join(folder, f"fold{fold}_{part}.txt")
            write_text(path, "".join(f"{i}\n" for i in ids))
            pair.append(path)
        paths.append(tuple(pair))
    return paths


@dataclasses.dataclass(frozen=True)
class LocalStage:
    """The local (refinement) stage of a coarse-to-fine experiment (`train.py --crop-shape`).

    Args:
        architecture: str. Network of the local stage.
        crop_shape: tuple of int. Crop (network input) shape, array order.
        grid_spacing: float. mm per pixel of the fine grid and the crops.
        steps, batch_size: int. Training steps; images per step (each gives
            `landmarks_per_image` crops).
        translation_mm: float. Largest offset of a training crop from its landmark per axis.
        landmarks_per_image: int or None. Crops per image and step (None: all landmarks).
    """

    architecture: str = "unet"
    crop_shape: tuple = (64, 64)
    grid_spacing: float = 0.4
    steps: int = 1500
    batch_size: int = 2
    translation_mm: float = 6.0
    landmarks_per_image: int = None


REFINED_ERRORS_FILE = "errors_refined_mm.npy"


def refined_run_errors(global_dir, local_dir, landmark_names, batch_size=4):
    """PointErrors of a global run refined by a local run on the global run's held-out images;
    computed once (`keraslm.evaluation.evaluate_runs` with `refine_runs`) and kept as
    `<global_dir>/errors_refined_mm.npy` with the local run's name and model metadata beside
    it (a changed local model, e.g. its `offset_prior_mm`, is evaluated again)."""
    path = os.path.join(global_dir, REFINED_ERRORS_FILE)
    source = os.path.join(global_dir, REFINED_ERRORS_FILE + ".json")
    key = {"local_run": os.path.abspath(local_dir),
           "local_metadata": read_json(os.path.join(local_dir, MODEL_METADATA_FILE),
                                       f"{local_dir}: no {MODEL_METADATA_FILE}; the run has not "
                                       "finished")}
    if os.path.isfile(path) and os.path.isfile(source):
        with open(source, encoding="utf-8") as handle:
            if json.load(handle) == key:
                return _stored_errors(path, global_dir, landmark_names)
    evaluation = evaluate_runs([global_dir], refine_runs=[local_dir], batch_size=batch_size)
    with atomic_path(path, suffix=".npy") as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, evaluation.errors.errors_mm)
    _write_json(source, key)
    return evaluation.errors


def isbi2015_cv(output_dir, dataset_root, architectures=("scn", "unet"), grid_shape=(128, 104),
                steps=2000, batch_size=8, num_folds=5, folds=None, num_images=None,
                preset="small", overrides=None, jit="auto", seed=0, log=None, local=None):
    """k-fold cross-validation on the ISBI 2015 training images (mm, 0.1 mm pixels).

    Args:
        output_dir: str. Experiment folder.
        dataset_root: str. Folder of the ISBI 2015 training images and landmarks.csv.
        architectures: sequence of str.
        grid_shape: tuple of int. Network grid (rows, columns); the spacing is the smallest
            at which the 2400 x 1935 px (240 x 193.5 mm) images fit.
        steps, batch_size, num_folds, folds, preset, overrides, jit, seed, log: as in `table1`.
        num_images: int or None. Cross-validate a random subset of this many images (smoke
            tests; split id files are written to output_dir/splits); None = all.
        local: LocalStage or None. Also train one local stage per fold and report every
            architecture refined by it (coarse-to-fine) beside its single-stage row.

    Runs are trained fold by fold (all architectures and the local stage of fold 0 first), so
    an experiment stopped early with `folds` or by interruption leaves complete folds.

    Returns:
        dict with `markdown`, `rows`, `records`, `per_landmark`.

    Raises:
        KeraslmError: `dataset_root` is not a folder.
    """
    _check_architectures(architectures)
    _check_parts("folds", folds, num_folds)
    if not os.path.isdir(dataset_root):
        raise KeraslmError(f"{dataset_root}: no such folder; the ISBI 2015 training images are needed")
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    dataset = load_dataset("isbi2015", root=dataset_root)
    id_files = None
    if num_images is not None:
        id_files = _write_fold_ids(os.path.join(output_dir, "splits"), dataset, num_images,
                                   num_folds, seed)

    def split(config, fold):
        if id_files:
            return config.replace(train_ids=id_files[fold][0],
                                       test_ids=id_files[fold][1])
        return config.replace(fold=fold, num_folds=num_folds)

    runs, local_runs = [], {}
    for fold in range(folds or num_folds):
        for architecture in architectures:
            config = _base_config(
                "isbi2015", os.path.abspath(dataset_root), architecture, grid_shape, steps,
                batch_size, preset, overrides, jit,
                os.path.join(output_dir, "runs", f"{architecture}_fold{fold}"), seed)
            runs.append(Run("", architecture, split(config, fold)))
        if local is not None:
            config = _base_config(
                "isbi2015", os.path.abspath(dataset_root), local.architecture, grid_shape,
                local.steps, local.batch_size, preset, overrides, jit,
                os.path.join(output_dir, "runs", f"local_{local.architecture}_fold{fold}"), seed)
            config = split(config, fold).replace(
                grid_shape=None, crop_shape=tuple(local.crop_shape),
                grid_spacing=local.grid_spacing, translation_mm=local.translation_mm,
                landmarks_per_image=local.landmarks_per_image)
            local_runs[fold] = Run("local", local.architecture, config)
    ordered = []
    for fold in range(folds or num_folds):
        ordered += [run for run in runs if run.config.output_dir.endswith(f"_fold{fold}")]
        if fold in local_runs:
            ordered.append(local_runs[fold])
    records = execute(ordered, log)
    errors = pooled_errors(runs, dataset.landmark_names)
    rows, landmarks, curves = [], {}, {}
    local_label = None if local is None else f"local {METHOD_LABELS[local.architecture]}"
    for architecture in architectures:
        label = METHOD_LABELS[architecture]
        pooled = errors[("", architecture)]
        rows.append({"architecture": architecture, "method": label, "summary": summarize(pooled)})
        landmarks[label] = per_landmark(pooled)
        curves[label] = pooled.errors_mm
        if local is None:
            continue
        parts = []
        for run in runs:
            if run.architecture == architecture:
                fold = int(run.config.output_dir.rsplit("_fold", 1)[1])
                log and log(f"refining {os.path.basename(run.config.output_dir)} with "
                            f"{os.path.basename(local_runs[fold].config.output_dir)}")
                parts.append(refined_run_errors(run.config.output_dir,
                                                local_runs[fold].config.output_dir,
                                                dataset.landmark_names))
        refined = pool(parts)
        refined_label = f"{label} + {local_label}"
        rows.append({"architecture": architecture, "method": refined_label,
                     "summary": summarize(refined)})
        landmarks[refined_label] = per_landmark(refined)
        curves[refined_label] = refined.errors_mm
    plot_cumulative_error(os.path.join(output_dir, CUMULATIVE_PLOT), curves,
                          title=f"ISBI 2015, {num_folds}-fold cross-validation"
                          + (f" (first {folds} fold{'s' if folds > 1 else ''})" if folds else ""))
    spacing = _grid_spacing(runs[0].config.output_dir)
    settings = {
        "dataset": f"ISBI 2015 training images ({num_images or len(dataset)} of {len(dataset)}, "
                   f"{dataset.num_landmarks} landmarks)",
        "grid": f"{_size(grid_shape)} at {spacing:.4f} mm", "steps": steps, "batch_size": batch_size,
        "model_preset": preset, "model_overrides": overrides or {},
        "cross_validation": f"{num_folds}-fold" + (f", first {folds} fold(s) only" if folds else ""),
        "seed": seed,
    }
    if local is not None:
        settings["local_stage"] = (
            f"{METHOD_LABELS[local.architecture]} on {_size(local.crop_shape)} crops at "
            f"{local.grid_spacing} mm, {local.steps} steps of {local.batch_size} images x "
            f"{local.landmarks_per_image or dataset.num_landmarks} crops, training offsets up to "
            f"{local.translation_mm} mm per axis")
        if local.translation_mm:
            settings["local_stage"] += (
                f"; peaks chosen with an offset prior of SD "
                f"{offset_prior_mm(local.translation_mm):.2f} mm around the global estimate")
    tables = (f"{format_sdr_table(rows)}\n\nCumulative error curve: {CUMULATIVE_PLOT}\n\n"
              f"Per landmark:\n\n{format_landmark_table(landmarks)}")
    text = _finish(output_dir, "ISBI 2015 cross-validation", settings, tables, records, start,
                   {"rows": _json_rows(rows), "per_landmark": {
                       method: [_clean_summary(row) for row in table] for method, table in landmarks.items()}})
    return {"markdown": text, "rows": rows, "records": records, "per_landmark": landmarks}


def _grid_spacing(run_dir):
    """float. The grid spacing (mm) a finished run recorded in its config.json."""
    with open(RunFolder(run_dir).config_path, encoding="utf-8") as handle:
        return float(json.load(handle)["grid_spacing"][0])


def _json_rows(rows):
    return [{**row, "summary": _clean_summary(row["summary"])} for row in rows]


__all__ = [
    "LocalStage",
    "METHOD_LABELS",
    "PAPER_ARCHITECTURES",
    "Run",
    "execute",
    "format_landmark_table",
    "format_paper_table",
    "format_sdr_table",
    "isbi2015_cv",
    "pooled_errors",
    "refined_run_errors",
    "run_errors",
    "run_finished",
    "sizes",
    "table1",
    "table2",
    "weight_ratios",
]
