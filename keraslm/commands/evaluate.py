"""Evaluate landmark predictions the way the paper reports them. See --help.

Three ways in:
  python evaluate.py --model runs/default/model.keras --dataset phantom2d --fold 0 --num-folds 5
  python evaluate.py --runs runs/fold0 runs/fold1 runs/fold2        (cross-validation, pooled)
  python evaluate.py --runs runs/a0,runs/b0 runs/a1,runs/b1          (ensembles of two, pooled)
  python evaluate.py --predictions predictions.csv --ground-truth landmarks.csv [--ndim 2]
  python evaluate.py --predictions predictions.csv --dataset isbi2015 --dataset-root DIR
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's start-up noise down.

from keraslm import cli  # noqa: E402
from keraslm.cli import HelpFormatter, add_dataset_arguments, add_split_arguments, ensemble_paths  # noqa: E402


#: --predictions: warn when the ground truth's shapes are more than this many times larger or
#: smaller than the predictions' (one file in pixels, the other in mm: 10 for ISBI 2015).
UNIT_RATIO_WARNING = 2.5


def _landmark_pair(text):
    try:
        pair = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two landmark indices like 1,5, got {text!r}") from None
    if len(pair) != 2:
        raise argparse.ArgumentTypeError(f"expected two landmark indices like 1,5, got {text!r}")
    return pair


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="keraslm-evaluate",
        description=(
            "Evaluate landmark localization: point error per landmark and image in physical mm, "
            "the paper's summary (median, mean +- SD, outliers > 10 mm), success detection rates "
            "at 2 / 2.5 / 3 / 4 mm, outlier counts at 2 / 4 / 10 mm and a per-landmark table. "
            "Missing ground truth, and missing predictions (with a warning), are excluded and "
            "counted. Input: a model plus a dataset split, "
            "training run folders (each on its own held-out split, pooled as in a "
            "cross-validation), or a predictions CSV plus a ground-truth CSV or dataset. Writes "
            "predictions.csv (headerless id,x0,y0,... in mm), predictions_named.csv, "
            "metrics.json, report.md and PNG plots into --output-dir."
        ),
        formatter_class=HelpFormatter,
    )
    source = parser.add_argument_group("what to evaluate (choose one)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument("--model", type=ensemble_paths,
                        help="a run folder, a .keras file (as train.py writes it) or a "
                        "SavedModel version folder; evaluated on --dataset's test split. A,B (.keras "
                        "files): an ensemble, the members' points averaged")
    choice.add_argument("--runs", nargs="+", metavar="RUN", type=ensemble_paths,
                        help="train.py run folders; each is evaluated on the held-out split its "
                        "config.json names, and all are pooled into one table. RUN_A,RUN_B "
                        "(comma-joined runs of the same split): an ensemble, their points "
                        "averaged")
    source.add_argument("--refine", nargs="+", metavar="LOCAL", type=ensemble_paths,
                        help="local stage(s) of a coarse-to-fine model (train.py --crop-shape) "
                        "refining the estimates: one model with --model, or one run folder per "
                        "--runs folder, in the same order; comma-joined: an ensemble of local "
                        "stages, each refining the same estimate, their points averaged")
    choice.add_argument("--predictions", help="predictions CSV in mm (named or headerless "
                        "layout; keraslm-predict's predictions.csv), compared with --ground-truth "
                        "or with --dataset's landmarks (which it converts to mm, e.g. ISBI "
                        "2015's pixel coordinates)")
    source.add_argument("--ground-truth", help="ground-truth CSV in mm, for --predictions (a "
                        "CSV in pixels: give it as --dataset CSV --dataset-root IMAGES --units "
                        "index --spacing MM; the images' headers place the pixels in mm)")
    source.add_argument("--ground-truth-subset", action="store_true",
                        help="with --predictions: the predictions cover only some of the "
                        "ground truth's images (e.g. one split of a whole dataset's CSV); rows "
                        "without a prediction are left out and counted. Without it every "
                        "image needs both. Ids match when they name the same image: x, x.png "
                        "and images/x.png (an unambiguous match)")
    data = parser.add_argument_group(
        "dataset and split (with --model; same meaning as in train.py; the dataset options "
        "alone also give the ground truth of --predictions)")
    add_dataset_arguments(data)
    add_split_arguments(data, held_out="test")
    data.add_argument("--all-images", action="store_true",
                      help="evaluate --model on every image of --dataset (an external test set "
                      "the model never trained on), instead of a split")
    data.add_argument("--seed", type=int, default=0, help="seed of the split (as in train.py)")
    metrics = parser.add_argument_group("metrics and output")
    metrics.add_argument("--normalize-distance", type=float, metavar="MM",
                         help="rescale each image's errors so that the distance between the "
                         "--normalize-landmarks is this many mm (the paper's hand data: 50)")
    metrics.add_argument("--normalize-landmarks", type=_landmark_pair, default=(1, 5), metavar="A,B",
                         help="zero-based reference landmarks of --normalize-distance")
    metrics.add_argument("--method", help="row label in the report (default: the architecture)")
    metrics.add_argument("--output-dir", default="evaluation", help="where to write the results")
    metrics.add_argument("--num-worst", type=int, default=4,
                         help="overlay plots of this many worst images")
    metrics.add_argument("--calibrate", metavar="JSON",
                         help="fit the expected error per landmark (keraslm.calibration) to these "
                         "held-out predictions and write it here; store it in an export with "
                         "keraslm-export ... --calibration JSON. Use predictions of "
                         "images the models did not train on (--runs of cross-validation folds)")
    metrics.add_argument("--no-blend", action="store_true",
                         help="with --calibrate and --refine: keep the refined points as they are "
                         "(default: also fit, per landmark, how much of the global stage's "
                         "estimate to mix into the refined one - keraslm.calibration.blend_stages "
                         "- store the weights in the calibration and report the blended points, "
                         "each image's from weights fitted without its run (--runs) or without "
                         "its fifth of the images)")
    metrics.add_argument("--shape-vote-margin", type=float, metavar="M",
                         help="with --calibrate: also store a shape vote "
                         "(keraslm.calibration.fit_shape_vote, fitted on the evaluated images' "
                         "annotated shapes): a point further from where the other landmarks "
                         "place it than M times its landmark's normal variation expects at "
                         "least the distance beyond (2 flags far-off points; the ISBI 2015 "
                         "model uses 2)")
    metrics.add_argument("--second-peak-power", type=float, metavar="P",
                         help="with --calibrate: damp each landmark's confidence by its global "
                         "heatmap's second peak, confidence x (1 - second_peak)^P, before it is "
                         "calibrated, so a point with a look-alike answer elsewhere expects a "
                         "larger error (default 2, as the ISBI 2015 model; 0 leaves it out; "
                         "models exported before keraslm gave the second peak are calibrated "
                         "without it)")
    metrics.add_argument("--calibration", metavar="JSON",
                         help="apply this calibration (from --calibrate) to the predictions and "
                         "report how well its expected errors rank the actual ones here, e.g. a "
                         "calibration fitted on one fold measured on another")
    metrics.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    metrics.add_argument("--batch-size", type=cli.positive_int, default=4,
                         help="images per network call")
    metrics.add_argument("--precision", default="float32",
                         choices=["float32", "bfloat16", "float16", "auto"],
                         help="compute precision of .keras models (auto: bfloat16 where the "
                         "CPU/GPU has it; float32 gives the SavedModel's numbers)")
    args = parser.parse_args(argv)
    typed = cli.typed_options(parser, argv)
    dataset_given = [flag for flag, value in (
        ("--dataset", "dataset" in typed),
        ("--dataset-root", args.dataset_root), ("--units", args.units),
        ("--spacing", args.spacing)) if value]
    if args.predictions and not args.ground_truth and not dataset_given:
        parser.error("--predictions needs a ground truth: --ground-truth CSV (mm) or --dataset")
    if args.predictions and args.ground_truth and dataset_given:
        parser.error(f"{', '.join(dataset_given)} and --ground-truth both give the ground truth "
                     "of --predictions: give one")
    if args.ground_truth and not args.predictions:
        parser.error("--ground-truth goes with --predictions")
    if args.ground_truth_subset and not args.predictions:
        parser.error("--ground-truth-subset goes with --predictions")
    if args.refine and args.predictions:
        parser.error("--refine goes with --model or --runs")
    if args.calibration and args.predictions:
        parser.error("--calibration needs a model (--model or --runs)")
    if args.no_blend and not (args.calibrate and args.refine):
        parser.error("--no-blend goes with --calibrate and --refine (it keeps the refined points "
                     "unblended in a new calibration)")
    if args.no_plots and args.num_worst != parser.get_default("num_worst"):
        parser.error("--num-worst chooses how many worst images are plotted: leave out --no-plots")
    if args.num_worst < 0:
        parser.error(f"--num-worst must be >= 0. Received: {args.num_worst}")
    if args.shape_vote_margin is not None and not args.calibrate:
        parser.error("--shape-vote-margin goes with --calibrate")
    if args.second_peak_power is not None and not args.calibrate:
        parser.error("--second-peak-power goes with --calibrate")
    if args.second_peak_power is not None and not 0 <= args.second_peak_power < float("inf"):
        parser.error(f"--second-peak-power must be a number >= 0. Received: "
                     f"{args.second_peak_power}")
    if args.shape_vote_margin is not None and args.shape_vote_margin < 0:
        parser.error(f"--shape-vote-margin must be >= 0. Received: {args.shape_vote_margin}")
    for option, path in (("--predictions", args.predictions), ("--ground-truth", args.ground_truth)):
        if path and _written_by_report(path, args.output_dir):
            parser.error(f"{option} {path} is a file the report writes into --output-dir "
                         f"{args.output_dir} (it would be replaced): choose another --output-dir")
    if args.calibrate and args.calibration:
        parser.error("--calibrate fits a new calibration, --calibration applies one: give one "
                     "(a calibration fitted on points blended by another's weights would be "
                     "saved without them)")
    if args.calibrate and args.predictions:
        parser.error("--calibrate needs a model (--model or --runs): CSV predictions carry no "
                     "confidence or spread")
    if args.refine and args.model and len(args.refine) != 1:
        parser.error("--refine takes one local model with --model")
    if args.all_images and not args.model:
        parser.error("--all-images goes with --model")
    if args.all_images and (args.fold is not None or args.train_ids or args.test_ids
                            or args.test_fraction != parser.get_default("test_fraction")):
        parser.error("--all-images evaluates every image: leave out --fold, --train-ids, "
                     "--test-ids and --test-fraction")
    if not args.model:
        # The dataset and split options describe --model's test data; --runs rebuild each run's
        # split from its config.json, and --predictions are compared with a whole ground truth
        # (a CSV or a dataset): refused, not ignored.
        given = [flag for flag, value in (
            ("--dataset", "dataset" in typed and not args.predictions),
            ("--dataset-root", args.dataset_root and not args.predictions),
            ("--units", args.units and not args.predictions),
            ("--spacing", args.spacing and not args.predictions),
            ("--ndim", getattr(args, "ndim", None) and not args.predictions),
            ("--fold", args.fold is not None),
            ("--num-folds", args.num_folds != parser.get_default("num_folds")),
            ("--train-ids", args.train_ids), ("--test-ids", args.test_ids),
            ("--test-fraction", args.test_fraction != parser.get_default("test_fraction")),
            ("--seed", getattr(args, "seed", None) != parser.get_default("seed")))
            if value]
        if given:
            parser.error(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --model: "
                         + ("--runs evaluate each run on the split its config.json names"
                            if args.runs else "--predictions are compared with every image of "
                            "the ground truth (--ground-truth-subset: those predicted)"))
    return args


def _written_by_report(path, output_dir):
    """Whether `path` is one of the files `write_report` replaces in `output_dir`."""
    from keraslm.evaluation.report import (METRICS_FILE, NAMED_PREDICTIONS_FILE,
                                           PREDICTIONS_FILE, REPORT_FILE)

    for name in (PREDICTIONS_FILE, NAMED_PREDICTIONS_FILE, METRICS_FILE, REPORT_FILE):
        target = os.path.join(output_dir, name)
        if os.path.exists(path) and os.path.exists(target) and os.path.samefile(path, target):
            return True
    return False


def _trained_on(args, dataset, test_set):
    """[(model path, ids)]: the test images each --model / --refine member was trained on, read
    from the run folder it lies in (config.json: its dataset and validation ids); models
    outside a run folder, or of another dataset, are not checked."""
    from keraslm.errors import KeraslmError
    from keraslm.run_folder import MODEL_FILE, RunFolder

    def absolute(path):
        return os.path.abspath(path) if path and os.path.exists(path) else path

    paths = [args.model] if isinstance(args.model, str) else list(args.model or [])
    paths += list(args.refine or [])
    found = []
    for path in paths:
        folder = path if os.path.isdir(path) else (
            os.path.dirname(path) if os.path.basename(path) == MODEL_FILE else None)
        if folder is None:
            continue
        try:
            config = RunFolder(folder).read_config()
        except (KeraslmError, OSError, ValueError):  # Not a run folder (no or a bad config.json).
            continue
        validation = config.get("validation_ids") if isinstance(config, dict) else None
        if (not isinstance(validation, list)
                or absolute(config.get("dataset")) != absolute(args.dataset)
                or absolute(config.get("dataset_root")) != absolute(args.dataset_root)):
            continue
        held_out = set(map(str, validation))
        seen = [i for i in test_set.ids if i not in held_out and i in set(dataset.ids)]
        if seen:
            found.append((path, seen))
    return found


def _with_calibration(result, calibration, path, global_only=None):
    """The evaluation with expected errors from `calibration` (read from `path`; and, for a
    calibration with `local_weight`, the points blended with `global_only`'s)."""
    import dataclasses

    from keraslm.calibration import check_calibration, expected_error_mm
    from keraslm.errors import CalibrationError, KeraslmError

    stages = [source.get("stages") for source in result.sources]
    try:
        check_calibration(calibration, result.landmark_names,
                          stages[0] if stages and all(s == stages[0] for s in stages) else None)
    except KeraslmError as error:
        raise CalibrationError(f"{path}: {error}") from None
    if result.confidence is None or result.spread_mm is None:
        raise KeraslmError(f"{path}: these predictions carry no confidence / spread to apply it to")
    if calibration.get("second_peak_power") is not None and result.second_peak is None:
        raise KeraslmError(f"{path}: this calibration reads the global second peak; these "
                           "predictions carry none (a model exported before keraslm gave it): "
                           "export the model again with this keraslm, or fit the calibration "
                           "with --second-peak-power 0")
    import numpy as np

    if calibration.get("local_weight") is not None:
        if global_only is None:
            raise KeraslmError(f"{path}: this calibration blends a global and a local stage "
                               "(local_weight); give the local stage with --refine")
        from keraslm.calibration import blend_stages
        from keraslm.evaluation.sources import with_points

        blended = np.asarray(blend_stages(global_only.predicted_mm, result.predicted_mm,
                                          calibration["local_weight"]))
        result = with_points(result, blended, f"{result.method} (stages blended)")
    # The answer's points (blended, as the model answers): a shape vote looks at them, and
    # accepts their mirror image where the model checks the facing (as its graph does).
    expected = np.asarray(expected_error_mm(calibration, result.confidence, result.spread_mm,
                                            result.predicted_mm, result.mirror_axis,
                                            second_peak=result.second_peak),
                          np.float64)
    return dataclasses.replace(result, expected_error_mm=expected)


def main(argv=None):
    args = parse_args(argv)
    from keraslm.data import select_split
    from keraslm.errors import KeraslmError, exit_status
    from keraslm import evaluation

    def log(message):
        print(message, flush=True)

    normalize = {"normalize_distance": args.normalize_distance,
                 "normalize_landmarks": args.normalize_landmarks}
    try:
        from keraslm.files import check_output_folder

        check_output_folder(args.output_dir, "--output-dir")  # Before the predictions run.
        if args.calibrate:
            if os.path.isdir(args.calibrate):
                raise KeraslmError(f"--calibrate {args.calibrate} is a folder; give the path "
                                   "of the calibration's .json file")
            check_output_folder(os.path.dirname(os.path.abspath(args.calibrate)),
                                "--calibrate's folder")
        calibration = None
        if args.calibration:  # Read first: a bad file is named before the predictions run.
            from keraslm.calibration import read_calibration

            # Its own consistency now; its landmarks against the model's after predicting.
            calibration = read_calibration(args.calibration)
        if args.predictions:
            truth = args.ground_truth or evaluation.open_dataset(
                args.dataset, args.dataset_root, spacing=args.spacing, units=args.units,
                ndim=args.ndim)
            result = evaluation.evaluate_predictions(
                args.predictions, truth, ndim=args.ndim,
                method=args.method or "predictions", ground_truth_subset=args.ground_truth_subset,
                **normalize)
            left_out = result.sources[0].get("ground_truth_rows_left_out")
            if left_out:
                log(f"{result.sources[0]['ground_truth']}: {left_out} image"
                    f"{'s' if left_out != 1 else ''} without a prediction left out")
            ratio = result.sources[0].get("shape_size_ratio")
            if ratio is not None and not 1 / UNIT_RATIO_WARNING <= ratio <= UNIT_RATIO_WARNING:
                print(f"warning: the ground truth's landmark shapes are {ratio:.3g} times the "
                      f"size of the predictions' ({result.sources[0]['ground_truth']} vs "
                      f"{args.predictions}): one of them is likely not in mm (pixels?), and the "
                      "errors below mean nothing. keraslm-predict's predictions.csv is in mm; "
                      "give a ground truth in pixels as --dataset CSV --dataset-root IMAGES "
                      "--units index --spacing MM (the images' headers place the pixels in mm)",
                      file=sys.stderr)
        elif args.runs:
            result = evaluation.evaluate_runs(
                args.runs, method=args.method, batch_size=args.batch_size, progress=log,
                refine_runs=args.refine, precision=args.precision, **normalize)
        else:
            dataset = evaluation.open_dataset(args.dataset, args.dataset_root, spacing=args.spacing,
                                              units=args.units, ndim=args.ndim)
            if args.all_images:
                test_set = dataset
            else:
                _, test_set = select_split(
                    dataset, fold=args.fold, num_folds=args.num_folds, train_ids=args.train_ids,
                    test_ids=args.test_ids, test_fraction=args.test_fraction, seed=args.seed)
                if not len(test_set):
                    raise KeraslmError(
                        f"dataset {dataset.name!r}: the split holds out no images; "
                        "--all-images evaluates every image (an external test set)")
            log(f"{dataset.name}: evaluating {len(test_set)} test images")
            for path, seen in _trained_on(args, dataset, test_set):
                print(f"warning: {len(seen)} of the {len(test_set)} test images were training "
                      f"images of {path} (its run's config.json: validation images are the "
                      f"others), e.g. {', '.join(seen[:3])}: the figures are not held-out; "
                      "evaluate it with the --fold / split it was trained with (or --runs RUN)",
                      file=sys.stderr)
            result = evaluation.evaluate_model(
                args.model, test_set, method=args.method, batch_size=args.batch_size,
                progress=log, source={"split_seed": args.seed, "fold": args.fold},
                refine=args.refine[0] if args.refine else None, precision=args.precision,
                **normalize)
        global_only = local_weight = None
        # Cross-fitting rounds: by run for pooled --runs, else fifths of the images by position.
        held_out = ("without its run" if evaluation.held_out_groups(result) is not None
                    else "without its fifth of the images")
        if args.refine and ((args.calibrate and not args.no_blend)
                            or (isinstance(calibration, dict)
                                and calibration.get("local_weight") is not None)):
            log("the global stage alone on the same images (to blend the stages per landmark)")
            if args.runs:
                global_only = evaluation.evaluate_runs(
                    args.runs, batch_size=args.batch_size, precision=args.precision, **normalize)
            else:
                global_only = evaluation.evaluate_model(
                    args.model, test_set, batch_size=args.batch_size, precision=args.precision,
                    **normalize)
        if args.calibration:
            result = _with_calibration(result, calibration, args.calibration, global_only)
        elif global_only is not None:
            refined_summary = result.summary()
            result, local_weight = evaluation.blend_evaluation(result, global_only)
            log(f"stages blended per landmark (each image's weights fitted {held_out}): MRE "
                f"{refined_summary['mean_mm']:.3f} -> {result.summary()['mean_mm']:.3f} mm; "
                "weights on the refined point: " + ", ".join(
                    f"{name} {weight:.1f}" for name, weight in zip(result.landmark_names, local_weight)))
        written = evaluation.write_report(args.output_dir, result, plots=not args.no_plots,
                                          num_worst=args.num_worst, progress=log)
        if args.calibrate:
            if result.second_peak is None and args.second_peak_power != 0:
                log("these predictions carry no second peak (a model exported before keraslm "
                    "gave it): the calibration reads the heatmap's confidence and spread only")
            _, quality, files = evaluation.write_calibration(
                args.calibrate, result, args.output_dir, plots=not args.no_plots,
                local_weight=local_weight, groups=evaluation.held_out_groups(result),
                shape_vote_margin=args.shape_vote_margin,
                second_peak_power=args.second_peak_power)
            written += files
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    except OSError as error:  # A full disk, a folder where a report file goes: the old report kept.
        print(f"error: cannot write the report into {args.output_dir}: {error}", file=sys.stderr)
        return 1
    summary = result.summary()
    print(evaluation.format_summary(summary, result.method))
    if summary["missing_predictions"]:
        print(f"warning: {summary['missing_predictions']} landmark(s) have ground truth but no "
              "prediction; they are left out of every figure above (a method that leaves the hard "
              "ones blank scores better), so compare methods on the same points",
              file=sys.stderr)
    if not args.predictions:  # A CSV of predictions carries no training positions.
        print(evaluation.format_baseline(result.summary(), result.baseline_summary()))
    if result.expected_error_mm is not None:
        from keraslm.calibration import calibration_quality

        print("expected error of the model: "
              + evaluation.format_calibration_quality(calibration_quality(result.expected_error_mm, result.errors.errors_mm)))
    if args.calibrate:
        print(f"calibration written to {args.calibrate}; cross-fitted on these images (each "
              f"image's expected errors from a calibration fitted {held_out}): "
              + evaluation.format_calibration_quality(quality))
    inside = os.path.abspath(args.output_dir)
    print(f"wrote {len(written)} file{'s' if len(written) != 1 else ''} into {args.output_dir}: "
          + ", ".join(os.path.basename(path) if os.path.dirname(os.path.abspath(path)) == inside
                      else path for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
