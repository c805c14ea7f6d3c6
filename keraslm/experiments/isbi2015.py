"""k-fold cross-validation on the ISBI 2015 training images, single-stage and coarse-to-fine
(refined points, and with two folds or more the two stages blended per landmark with weights
fitted on the other folds): MRE +- SD, SDR at 2 / 2.5 / 3 / 4 mm, per-fold and per-landmark
tables, cumulative error curve."""
import argparse
import dataclasses
import os
import time

from keraslm.datasets import load_dataset
from keraslm.errors import KeraslmError
from keraslm.evaluation import per_landmark, point_errors, pool, summarize
from keraslm.evaluation.plots import plot_cumulative_error
from keraslm.evaluation.tables import format_landmark_table, format_sdr_table
from keraslm.experiments.runs import (
    CUMULATIVE_PLOT,
    METHOD_LABELS,
    Run,
    base_config,
    blended_fold_errors,
    check_architectures,
    check_parts,
    clean_summary,
    execute,
    finish,
    grid_spacing,
    json_rows,
    run_errors,
    size_text,
    stage_points,
)
from keraslm.files import read_json, write_text
from keraslm.spec import offset_prior_mm
from keraslm.run_folder import RunFolder


def _folds(text):
    try:
        folds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated fold numbers expected: {text!r}")
    if len(set(folds)) != len(folds):
        raise argparse.ArgumentTypeError(f"a fold given twice: {text!r}")
    return folds


def add_fold_model_arguments(parser, several_folds=False):
    """The arguments of a script that evaluates one cross-validation fold's models on its
    held-out ISBI 2015 images: --global, --refine, --fold, --num-folds, --dataset-root,
    --output-dir. With `several_folds`, --fold takes a comma-separated list and the run folders
    a `{fold}` placeholder (`fold_model(args, fold)` fills it in)."""
    folder = "folder(s)" + (" with {fold} for the fold's number" if several_folds else "")
    parser.add_argument("--global", dest="global_runs", required=True,
                        help=f"the fold's global run {folder}, comma-separated (an ensemble)")
    parser.add_argument("--refine", help=f"the fold's local run {folder}, comma-separated")
    if several_folds:
        parser.add_argument("--fold", type=_folds, required=True, metavar="K[,K...]",
                            help="the fold(s), comma-separated")
    else:
        parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--num-folds", type=int, default=5)
    parser.add_argument("--dataset-root", default="../shared/data/isbi2015-train")
    parser.add_argument("--output-dir", required=True)


def fold_model(args, fold=None):
    """(run folders, their combined detector, the dataset, its training split, its held-out
    split) of `add_fold_model_arguments`' parsed `args`; `fold` (with `several_folds`) fills
    the run folders' `{fold}` placeholder and chooses the split."""
    from keraslm.data import select_split
    from keraslm.prediction import combine_detectors, load_detector

    if fold is not None:
        args = argparse.Namespace(**{**vars(args), "fold": fold,
                                     "global_runs": args.global_runs.format(fold=fold),
                                     "refine": args.refine and args.refine.format(fold=fold)})
    runs = args.global_runs.split(",") + (args.refine.split(",") if args.refine else [])
    detector = combine_detectors([load_detector(os.path.join(r, "model.keras")) for r in runs])
    dataset = load_dataset("isbi2015", root=args.dataset_root)
    training, held_out = select_split(dataset, fold=args.fold, num_folds=args.num_folds, seed=0)
    return runs, detector, dataset, training, held_out


def mirrored_left_right(image):
    """A 2D image mirrored left-right with the same geometry: a patient facing the other way
    (the ISBI 2015 cephalograms all face right)."""
    import numpy as np

    from keraslm.io import Image

    return Image(np.ascontiguousarray(image.array[:, ::-1]), spacing=image.spacing,
                 origin=image.origin, direction=image.direction,
                 spacing_source=image.spacing_source)


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


def _fold(run):
    """int. The fold of a run (its folder is named `<architecture>_fold<k>`)."""
    return int(run.config.output_dir.rsplit("_fold", 1)[1])


def _fold_rows(label, runs, errors):
    """Table rows of one method, one per fold: `errors` holds each run's PointErrors."""
    return [{"method": f"{label}, fold {_fold(run)} ({len(part.ids)} images)",
             "summary": summarize(part)} for run, part in zip(runs, errors)]


def _augmentation_text(run_dir):
    """str. The geometric augmentation a finished global run trained with (its config.json)."""
    settings = read_json(RunFolder(run_dir).config_path, f"{run_dir}: no config.json")["settings"]
    return (f"rotation up to {settings['rotation_degrees']:g} degrees, scaling up to "
            f"{settings['scale']:g}, translation up to {settings['translation_mm']:g} mm")


@dataclasses.dataclass(frozen=True)
class LocalStageSettings:
    """The local (refinement) stage of a coarse-to-fine experiment (`train.py --crop-shape`).

    Args:
        architecture: str. Network of the local stage.
        crop_shape: tuple of int. Crop (network input) shape, array order.
        grid_spacing: float. mm per pixel of the fine grid and the crops.
        steps, batch_size: int. Training steps; images per step (each gives
            `landmarks_per_image` crops).
        translation_mm: float. Largest offset of a training crop from its landmark per axis.
        landmarks_per_image: int or None. Crops per image and step (None: all landmarks).
        model_overrides: dict or None. Model settings of the local network (None: the
            experiment's `overrides`, as for the global stage).
        elastic_mm: float or None. Elastic deformation of the crops (`train.py --elastic-mm`;
            None: the training preset's, none).
    """

    architecture: str = "unet"
    crop_shape: tuple = (64, 64)
    grid_spacing: float = 0.4
    steps: int = 1500
    batch_size: int = 2
    translation_mm: float = 6.0
    landmarks_per_image: int = None
    model_overrides: dict = None
    elastic_mm: float = None


def isbi2015_cv(output_dir, dataset_root, architectures=("scn", "unet"), grid_shape=(128, 104),
                steps=2000, batch_size=8, num_folds=5, folds=None, num_images=None,
                preset="small", overrides=None, jit="auto", seed=0, log=None, local=None,
                rotation_degrees=None, scale_range=None, ensemble_grid_shape=None,
                ensemble_local=None):
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
        local: LocalStageSettings or None. Also train one local stage per fold and report every
            architecture refined by it (coarse-to-fine) beside its single-stage row; with two
            folds or more also the stages blended per landmark (`blended_fold_errors`; the
            weights fitted on all folds are in results.json, `local_weight`).
        ensemble_grid_shape: tuple of int or None. Also train, per fold and architecture, a
            second global stage on this grid (otherwise the same settings) - an ensemble of two
            global stages (`keraslm.prediction.load_predictor`).
        ensemble_local: LocalStageSettings or None. Also train a second local stage per fold
            (needs `local`). With either, the report adds the ensemble's rows (refined and, with
            two folds or more, blended): the global members' mean refined by every local
            member, their points averaged.

    Runs are trained fold by fold (all architectures and the local stage of fold 0 first), so
    an experiment stopped early with `folds` or by interruption leaves complete folds.

    Returns:
        dict with `markdown`, `rows`, `records`, `per_landmark`.

    Raises:
        KeraslmError: `dataset_root` is not a folder.
    """
    check_architectures(architectures)
    check_parts("folds", folds, num_folds)
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

    if ensemble_local is not None and local is None:
        raise KeraslmError("a second local stage (ensemble_local) needs a local stage (local)")

    def local_run(settings, fold, name):
        config = base_config(
            "isbi2015", os.path.abspath(dataset_root), settings.architecture, grid_shape,
            settings.steps, settings.batch_size, preset,
            overrides if settings.model_overrides is None else settings.model_overrides, jit,
            os.path.join(output_dir, "runs", f"{name}_fold{fold}"), seed)
        config = split(config, fold).replace(
            grid_shape=None, crop_shape=tuple(settings.crop_shape),
            grid_spacing=settings.grid_spacing, translation_mm=settings.translation_mm,
            landmarks_per_image=settings.landmarks_per_image, elastic_mm=settings.elastic_mm)
        return Run("local", settings.architecture, config)

    runs, member_runs, local_runs, local_member_runs = [], {}, {}, {}
    for fold in range(folds or num_folds):
        for architecture in architectures:
            for second in (False, True):
                if second and ensemble_grid_shape is None:
                    continue
                config = base_config(
                    "isbi2015", os.path.abspath(dataset_root), architecture,
                    ensemble_grid_shape if second else grid_shape, steps, batch_size, preset,
                    overrides, jit, os.path.join(output_dir, "runs", f"{architecture}"
                                                 f"{'_member2' if second else ''}_fold{fold}"), seed)
                config = split(config.replace(rotation_degrees=rotation_degrees, scale=scale_range), fold)
                if second:
                    member_runs[architecture, fold] = Run("member2", architecture, config)
                else:
                    runs.append(Run("", architecture, config))
        if local is not None:
            local_runs[fold] = local_run(local, fold, f"local_{local.architecture}")
        if ensemble_local is not None:
            local_member_runs[fold] = local_run(
                ensemble_local, fold, f"local_{ensemble_local.architecture}_member2")
    ordered = []
    for fold in range(folds or num_folds):
        ordered += [run for run in runs if run.config.output_dir.endswith(f"_fold{fold}")]
        ordered += [run for run in member_runs.values()
                    if run.config.output_dir.endswith(f"_fold{fold}")]
        ordered += [stage[fold] for stage in (local_runs, local_member_runs) if fold in stage]
    records = execute(ordered, log)
    run_parts = {run.config.output_dir: run_errors(run.config.output_dir, dataset.landmark_names)
                 for run in runs}
    rows, landmarks, curves, fold_rows, local_weights = [], {}, {}, [], {}

    def add_method(method, architecture, method_runs, parts):
        """One table row (pooled over the folds), its per-fold rows, landmarks and curve."""
        pooled = pool(parts)
        rows.append({"architecture": architecture, "method": method, "summary": summarize(pooled)})
        landmarks[method] = per_landmark(pooled)
        curves[method] = pooled.errors_mm
        fold_rows.extend(_fold_rows(method, method_runs, parts))

    local_label = None if local is None else f"local {METHOD_LABELS[local.architecture]}"
    for architecture in architectures:
        label = METHOD_LABELS[architecture]
        architecture_runs = [run for run in runs if run.architecture == architecture]
        parts = [run_parts[run.config.output_dir] for run in architecture_runs]
        add_method(label, architecture, architecture_runs, parts)
        if local is None:
            continue
        points = []
        for run in architecture_runs:
            fold = _fold(run)
            log and log(f"refining {os.path.basename(run.config.output_dir)} with "
                        f"{os.path.basename(local_runs[fold].config.output_dir)}")
            points.append(stage_points(run.config.output_dir, local_runs[fold].config.output_dir))
        parts = [point_errors(part.refined_mm, part.ground_truth_mm, part.ids, dataset.landmark_names)
                 for part in points]
        refined_label = f"{label} + {local_label}"
        add_method(refined_label, architecture, architecture_runs, parts)
        if len(points) >= 2:
            parts, weights = blended_fold_errors(points, dataset.landmark_names)
            add_method(f"{refined_label}, blended", architecture, architecture_runs, parts)
            local_weights[architecture] = dict(zip(dataset.landmark_names, weights.tolist()))
        if not member_runs and not local_member_runs:
            continue
        points = []
        for run in architecture_runs:
            fold = _fold(run)
            members = [run.config.output_dir] + (
                [member_runs[architecture, fold].config.output_dir]
                if (architecture, fold) in member_runs else [])
            local_members = [stage[fold].config.output_dir
                             for stage in (local_runs, local_member_runs) if fold in stage]
            log and log(f"refining the ensemble {', '.join(map(os.path.basename, members))} with "
                        f"{', '.join(map(os.path.basename, local_members))}")
            points.append(stage_points(members, local_members))
        ensemble_label = (f"{label} x{len(members)} + {local_label}"
                          + (f" x{len(local_members)}" if len(local_members) > 1 else "")
                          + " (ensemble)")
        parts = [point_errors(part.refined_mm, part.ground_truth_mm, part.ids, dataset.landmark_names)
                 for part in points]
        add_method(ensemble_label, architecture, architecture_runs, parts)
        if len(points) >= 2:
            parts, weights = blended_fold_errors(points, dataset.landmark_names)
            add_method(f"{ensemble_label}, blended", architecture, architecture_runs, parts)
            local_weights[f"{architecture} ensemble"] = dict(zip(dataset.landmark_names,
                                                                 weights.tolist()))
    plot_cumulative_error(os.path.join(output_dir, CUMULATIVE_PLOT), curves,
                          title=f"ISBI 2015, {num_folds}-fold cross-validation"
                          + (f" (first {folds} fold{'s' if folds > 1 else ''})" if folds else ""))
    spacing = grid_spacing(runs[0].config.output_dir)
    settings = {
        "dataset": f"ISBI 2015 training images ({num_images or len(dataset)} of {len(dataset)}, "
                   f"{dataset.num_landmarks} landmarks)",
        "grid": f"{size_text(grid_shape)} at {spacing:.4f} mm", "steps": steps, "batch_size": batch_size,
        "model_preset": preset, "model_overrides": overrides or {},
        "augmentation": _augmentation_text(runs[0].config.output_dir),
        "cross_validation": f"{num_folds}-fold" + (f", first {folds} fold(s) only" if folds else ""),
        "seed": seed,
    }
    if local is not None:
        settings["local_stage"] = (
            f"{METHOD_LABELS[local.architecture]} on {size_text(local.crop_shape)} crops at "
            f"{local.grid_spacing} mm, {local.steps} steps of {local.batch_size} images x "
            f"{local.landmarks_per_image or dataset.num_landmarks} crops, training offsets up to "
            f"{local.translation_mm} mm per axis")
        if local.translation_mm:
            settings["local_stage"] += (
                f"; peaks chosen with an offset prior of SD "
                f"{offset_prior_mm(local.translation_mm):.2f} mm around the global estimate")
    if member_runs:
        settings["ensemble_global"] = (
            f"a second global stage per fold on {size_text(ensemble_grid_shape)} at "
            f"{grid_spacing(next(iter(member_runs.values())).config.output_dir):.4f} mm, "
            "otherwise the same; the ensemble averages the two global estimates")
    if local_member_runs:
        second = ensemble_local
        settings["ensemble_local"] = (
            f"a second local stage per fold: {METHOD_LABELS[second.architecture]} on "
            f"{size_text(second.crop_shape)} crops at {second.grid_spacing} mm, {second.steps} "
            f"steps, offsets up to {second.translation_mm} mm"
            + (f", elastic deformation {second.elastic_mm} mm" if second.elastic_mm else "")
            + "; both local stages refine the ensemble's global estimate, their points averaged")
    if local is not None and local.elastic_mm:
        settings["local_stage"] += f"; elastic deformation {local.elastic_mm} mm"
    if local_weights:
        settings["blended"] = (
            "rows '..., blended': per landmark w x refined + (1 - w) x global point "
            "(keraslm.calibration.blend_stages, as a model calibrated with evaluate.py --calibrate "
            "answers), each fold's images with w fitted on the other folds' held-out predictions; "
            "w fitted on all folds: " + "; ".join(
                f"{METHOD_LABELS[architecture.split()[0]]}"
                f"{' ensemble' if architecture.endswith(' ensemble') else ''}: " + ", ".join(
                    f"{name} {weight:.1f}" for name, weight in weights.items())
                for architecture, weights in local_weights.items()))
    tables = (f"{format_sdr_table(rows)}\n\nCumulative error curve: {CUMULATIVE_PLOT}\n\n"
              f"Per fold:\n\n{format_sdr_table(fold_rows)}\n\n"
              f"Per landmark:\n\n{format_landmark_table(landmarks)}")
    text = finish(output_dir, "ISBI 2015 cross-validation", settings, tables, records, start,
                   {"rows": json_rows(rows), "per_landmark": {
                       method: [clean_summary(row) for row in table] for method, table in landmarks.items()},
                    "per_fold": json_rows(fold_rows), "local_weight": local_weights})
    return {"markdown": text, "rows": rows, "records": records, "per_landmark": landmarks}
