"""`keraslm-predict` / `python -m keraslm predict`: landmarks in new images, written as CSV
(mm and image index), JSON, 3D Slicer markups and, for a calibrated model, expected errors."""
import argparse
import os
import sys

from keraslm import cli
from keraslm.errors import KeraslmError, exit_status
from keraslm.io import is_image_path, natural_key


def _holds_dicom(folder):
    """Whether `folder` holds a DICOM file (by name or marker): a sub-folder of thumbnails or
    notes is not taken for a DICOM series (reading it would stop the whole run)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return True  # Let reading it name the problem.
    for name in names:
        path = os.path.join(folder, name)
        if (os.path.isfile(path) and not name.startswith(".")
                and (name.lower().endswith(".dcm") or (not os.path.splitext(name)[1]
                                                       and is_image_path(path)))):
            return True
    return False


def main(argv=None):
    """`keraslm-predict` / `python -m keraslm predict`."""
    parser = argparse.ArgumentParser(
        prog="keraslm-predict",
        description="Find landmarks in images with a trained keraslm model and write them into "
        "--output-dir: predictions.csv (physical mm), predictions_index.csv (image index, "
        "0-based, pixel centres at whole numbers), predictions.json, markups/<id>.mrk.json (3D "
        "Slicer; the folder is replaced whole, and refused if it holds other files) and, for a "
        "calibrated model, expected_error.csv with a `check` column.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("model", type=cli.ensemble_paths,
                        help="a training run folder or its model.keras, or a SavedModel "
                        "version folder; A,B,... (comma-joined run folders or .keras files) is an ensemble whose "
                        "members' points are averaged (an exported ensemble is one folder)")
    parser.add_argument("--refine", metavar="LOCAL_MODEL", type=cli.ensemble_paths,
                        help="local stage of a coarse-to-fine model (train.py --crop-shape) that "
                        "refines the model's estimates on fine-grid crops; L,M,... is an "
                        "ensemble of local stages, each refining the global estimate, averaged")
    parser.add_argument("--refine-iterations", type=cli.positive_int, default=1, metavar="N",
                        help="local passes with --refine; each centres the crops on the previous "
                        "estimate")
    parser.add_argument("images", nargs="+", help="image files, or folders whose image files (and "
                        "sub-folders, as DICOM series) are all predicted. An image's id is its "
                        "file name without the extension; images of the same name get their path "
                        "from the inputs' common folder (da/x, db/x), with the extension where "
                        "that is not enough (y.png, y.dcm)")
    parser.add_argument("--series", action="store_true",
                        help="the given folders are DICOM series themselves (one 3D image each)")
    parser.add_argument("--spacing", type=cli.spacing, metavar="MM",
                        help="mm per pixel of plain images (PNG/JPEG/BMP/TIFF), which store "
                        "none: 0.1 or x,y. Required when such images are given (an error names "
                        "the spacing the model was trained on, where it is recorded); DICOM and "
                        "NIfTI files carry their own. For a DICOM without pixel spacing it is "
                        "the in-plane spacing; a series keeps the slice gap of its slices' "
                        "positions")
    parser.add_argument("--output-dir", default="predictions", help="where to write the results")
    parser.add_argument("--flag-mm", type=cli.positive_float, metavar="MM",
                        help="a calibrated model's landmarks whose expected error is above MM "
                        "are flagged to check by hand (printed, a warning per image, the "
                        "`check` column of expected_error.csv). Default: 2.5. Lower flags more "
                        "landmarks and catches more of the far-off ones: the shipped ISBI "
                        "model's figures per threshold are in docs/results/pretrained.md")
    parser.add_argument("--skip-errors", action="store_true",
                        help="an image that cannot be read or predicted is named and left out, "
                        "the others are predicted and written, and the exit status is 1. "
                        "Without it, the first such image stops the run with nothing written")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "bfloat16", "float16", "auto"],
                        help="compute precision of .keras models (float32: the same numbers as "
                        "the SavedModel export; auto: bfloat16 where the CPU/GPU has it)")
    args = parser.parse_args(argv)
    # Imported after the arguments are parsed: they load TensorFlow, which --help does not need.
    from keraslm.prediction import (FLAG_MM, check_plain_image_spacing, check_prediction_folder,
                                    input_image_ids, load_predictor, predict, write_predictions)

    paths = []
    for item in args.images:
        if not os.path.exists(item):
            print(f"error: {item}: no such image file or folder", file=sys.stderr)
            return 1
        if os.path.isdir(item) and not args.series:
            # A folder of images: its image files, and its sub-folders as DICOM series, in
            # natural order (2.png before 10.png).
            try:
                names = os.listdir(item)
            except OSError as error:
                print(f"error: {item}: cannot list the folder ({error.strerror})",
                      file=sys.stderr)
                return 1
            found = sorted((os.path.join(item, name) for name in names
                            if not name.startswith(".")
                            and is_image_path(os.path.join(item, name))), key=natural_key)
            for path in found:
                if os.path.isdir(path) and not _holds_dicom(path):
                    print(f"note: {path} skipped: a sub-folder without DICOM files (sub-folders "
                          "are read as DICOM series)", file=sys.stderr)
                else:
                    paths.append(path)
        else:
            paths.append(item)
    if not paths:
        print(f"error: no images found in {', '.join(args.images)}", file=sys.stderr)
        return 2
    try:
        check_prediction_folder(args.output_dir, "--output-dir")
        if args.refine_iterations != 1 and not args.refine:
            raise KeraslmError("--refine-iterations needs --refine")
        input_image_ids(paths)  # Unique ids (or an error) before the model loads; predict names so.
        model = load_predictor(args.model, refine=args.refine, precision=args.precision,
                               iterations=args.refine_iterations)
        # A run-wide error (no --spacing for plain images) before any image, not per image.
        check_plain_image_spacing(paths, args.spacing, model.spec)
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    try:
        skipped = []

        def skip(image_id, error):
            skipped.append(image_id)
            print(f"error: {error} (skipped)", file=sys.stderr)

        def progress(message):
            print(message, file=sys.stderr, flush=True)

        predictions = predict(model, paths, spacing=args.spacing,
                              on_error=skip if args.skip_errors else None,
                              progress=progress if len(paths) > 1 else None)
    except KeraslmError as error:
        hint = ("; nothing written (--skip-errors predicts the other images)"
                if len(paths) > 1 else "")
        print(f"error: {error}{hint}", file=sys.stderr)
        return exit_status(error)
    if not predictions:
        print(f"error: none of the {len(paths)} images could be predicted; nothing written",
              file=sys.stderr)
        return 1
    flag_mm = FLAG_MM if args.flag_mm is None else args.flag_mm
    calibrated = bool(predictions) and predictions[0].expected_error_mm is not None
    if args.flag_mm is not None and not calibrated:
        print(f"warning: --flag-mm has no effect: {args.model if isinstance(args.model, str) else ','.join(args.model)} has no calibration, "
              "so no expected errors to flag (keraslm-evaluate --calibrate fits one)",
              file=sys.stderr)
    for prediction in predictions:
        print(f"{prediction.image_id}:")
        expected = prediction.expected_error_mm
        for i, (name, point) in enumerate(zip(prediction.landmark_names, prediction.points_mm)):
            line = (f"  {name:<28} {'  '.join(f'{v:9.2f}' for v in point)} mm   "
                    f"confidence {prediction.confidence[i]:7.2f}")
            if expected is not None:
                line += f"   expected error {expected[i]:5.2f} mm"
                line += "   CHECK" if expected[i] > flag_mm else ""
            print(line)
    any_flagged = False
    for prediction in predictions:  # One line per image with a landmark to check.
        expected = prediction.expected_error_mm
        if expected is not None and any(error > flag_mm for error in expected):
            any_flagged = True
            flagged = [f"{name} {error:.1f} mm" for name, error
                       in zip(prediction.landmark_names, expected) if error > flag_mm]
            print(f"warning: {prediction.image_id}: {len(flagged)} landmark(s) to check by hand "
                  f"(expected error above {flag_mm:g} mm): {', '.join(flagged)}", file=sys.stderr)
    if any_flagged:
        print(f"CHECK: expected error above {flag_mm:g} mm (the model's calibration on held-out "
              "images); look at these landmarks by hand")
    elif calibrated:
        print(f"no landmark flagged: every expected error is at most {flag_mm:g} mm")
    try:
        written = write_predictions(args.output_dir, predictions, flag_mm)
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    except OSError as error:
        print(f"error: cannot write the predictions into {args.output_dir}: {error}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(written))
    if skipped:
        print(f"error: {len(skipped)} of {len(paths)} images skipped (not in the output): "
              f"{', '.join(skipped)}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
