"""The paper's Tables 1 and 2 on the synthetic phantoms: architectures x folds (2D, with a
reduced training set) or x random splits (3D), pooled per table row."""
import os
import time

from keraslm.datasets import load_dataset, make_phantom
from keraslm.evaluation import summarize
from keraslm.evaluation.tables import format_paper_table
from keraslm.experiments.runs import (
    METHOD_LABELS,
    PAPER_ARCHITECTURES,
    Run,
    base_config,
    check_architectures,
    check_parts,
    execute,
    finish,
    grid_spacing,
    json_rows,
    pooled_errors,
    size_text,
)
from keraslm.models import build_model


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


def sizes(architecture, ndim, num_landmarks, grid_shape, preset, overrides=None):
    """(input, target) strings like "64x64", "16x16": the network grid and heatmap sizes."""
    model = build_model(architecture, ndim, num_landmarks, preset=preset, **(overrides or {}))
    return size_text(grid_shape), size_text(model.output_spatial_shape(tuple(grid_shape)))


def _phantom(output_dir, ndim, num_images, image_size):
    """Dataset name or folder: the default phantom, or a smaller one generated into output_dir."""
    if num_images is None and image_size is None:
        return "phantom2d" if ndim == 2 else "phantom3d"
    folder = os.path.join(output_dir, f"phantom{ndim}d")
    make_phantom(folder, ndim=ndim, num_images=num_images, seed=0, image_size=image_size)
    return folder


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
    check_architectures(architectures)
    check_parts("folds", folds, num_folds)
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    dataset_name = _phantom(output_dir, 2, num_images, image_size)
    dataset = load_dataset(dataset_name)
    groups = ["full"] + (["reduced"] if reduced_size else [])
    runs = []
    for group in groups:
        for architecture in architectures:
            for fold in range(folds or num_folds):
                config = base_config(
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
    spacing = grid_spacing(runs[0].config.output_dir)
    settings = {
        "dataset": f"{dataset.name} ({len(dataset)} images, {dataset.num_landmarks} landmarks)",
        "grid": f"{size_text(grid_shape)} at {spacing:.3f} mm", "steps": steps, "batch_size": batch_size,
        "model_preset": preset, "model_overrides": overrides or {},
        "cross_validation": f"{num_folds}-fold" + (f", first {folds} fold(s) only" if folds else ""),
        "reduced_set": f"{reduced_size} training images per fold, elastic_mm={reduced_elastic_mm}"
        if reduced_size else "none", "seed": seed,
    }
    table = format_paper_table(rows)
    text = finish(output_dir, "Table 1 analogue: 2D phantom", settings, table, records, start,
                   {"rows": json_rows(rows)})
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
    check_architectures(architectures)
    check_parts("num_splits", num_splits, 1000)
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    dataset_name = _phantom(output_dir, 3, num_images, image_size)
    dataset = load_dataset(dataset_name)
    runs = []
    for architecture in architectures:
        for split in range(num_splits):
            config = base_config(
                dataset_name, None, architecture, grid_shape, steps, batch_size, preset, overrides,
                jit, os.path.join(output_dir, "runs", f"{architecture}_split{split}"), seed + split)
            runs.append(Run("", architecture, config.replace(test_fraction=test_fraction)))
    records = execute(runs, log)
    rows = _paper_rows(runs, dataset, grid_shape, preset, overrides, [""])
    num_test = int(round(test_fraction * len(dataset)))
    settings = {
        "dataset": f"{dataset.name} ({len(dataset)} images, {dataset.num_landmarks} landmarks)",
        "grid": f"{size_text(grid_shape)} (z, y, x) at {grid_spacing(runs[0].config.output_dir):.3f} mm",
        "steps": steps, "batch_size": batch_size, "model_preset": preset,
        "model_overrides": overrides or {},
        "splits": f"{num_splits} random splits, {len(dataset) - num_test} training / {num_test} test images",
        "seed": seed,
    }
    table = format_paper_table(rows, include_set=False, include_weights=False)
    text = finish(output_dir, "Table 2 analogue: 3D phantom", settings, table, records, start,
                   {"rows": json_rows(rows)})
    return {"markdown": text, "rows": rows, "records": records}
