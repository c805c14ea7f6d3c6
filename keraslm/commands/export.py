"""`keraslm-export` / `python -m keraslm export`: a trained detector as the next version folder
of a TF Serving model (`keraslm.export`)."""
import argparse
import os
import sys

from keraslm.cli import ensemble_paths, positive_int
from keraslm.errors import KeraslmError, ModelFileError, UsageError, exit_status


def _is_saved_model(path):
    """Whether `path` is a SavedModel version folder or a base folder of versions."""
    from keraslm.prediction.predictors import saved_model_versions

    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "saved_model.pb"))
                                    or bool(saved_model_versions(path)))


def main(argv=None):
    """`keraslm-export` / `python -m keraslm export`."""
    parser = argparse.ArgumentParser(
        prog="keraslm-export",
        description="Export a trained model (a run folder or a .keras file, as train.py writes "
        "them) as the next version folder <base>/<n>/ of a TF Serving model. With --refine, a "
        "coarse-to-fine model; with comma-joined models, an ensemble; each becomes one "
        "SavedModel. Signatures: serving_default, predict_image (2D: image file bytes) and "
        "predict_array (pixels and geometry); landmarks in mm out.")
    parser.add_argument("model", type=ensemble_paths,
                        help="the global (whole-image) model: run folder or .keras file. A,B: "
                        "an ensemble of global stages (their points averaged)")
    parser.add_argument("base_dir", help="TF Serving model base folder, e.g. "
                        "saved_models/isbi2015_scn. Versions are never overwritten; the newest "
                        "one already there must answer the same landmarks and dimension (TF "
                        "Serving serves the newest under the folder's name)")
    parser.add_argument("--refine", metavar="LOCAL_MODEL", type=ensemble_paths,
                        help="the local stage (train.py --crop-shape): run folder or .keras "
                        "file; A,B: an ensemble of local stages, each refining the global "
                        "estimate, their points averaged")
    parser.add_argument("--version", type=positive_int, help="version number (default: the "
                        "next one; TF Serving serves the highest, so a lower one is kept but "
                        "not served)")
    parser.add_argument("--calibration", metavar="JSON",
                        help="a calibration (evaluate.py --calibrate) to store in the model, so "
                        "every prediction carries expected_error_mm per landmark; fitted on "
                        "held-out predictions of the same stages (a calibration of one global "
                        "model does not fit an ensemble or a coarse-to-fine pair)")
    parser.add_argument("--mirror-check", metavar="AXIS:CONFIDENCE",
                        help="for subjects that may face either way (lateral cephalograms): an "
                        "image whose mean landmark confidence in the global stage is below "
                        "CONFIDENCE goes through it mirrored along AXIS too, the surer facing is "
                        "kept and refined, e.g. x:30 (fit CONFIDENCE on the global stage's "
                        "confidences of held-out images and their mirrors: "
                        "keraslm.calibration.fit_mirror_threshold)")
    args = parser.parse_args(argv)
    # Imported after the arguments are parsed: they load TensorFlow, which --help does not need.
    from keraslm.export import export_saved_model, saved_model_versions
    from keraslm.prediction import LandmarkDetector, combine_detectors
    from keraslm.prediction.predictors import load_model

    def members(value):
        return [] if value is None else (value if isinstance(value, list) else [value])

    try:
        global_paths, local_paths = members(args.model), members(args.refine)
        for path in global_paths + local_paths:  # Before loading anything.
            if _is_saved_model(path):
                raise UsageError(f"{path}: a SavedModel is exported already; export the .keras "
                                 "model or run folder it was made from")
        calibration = None
        if args.calibration:  # Read first: a bad file is named before the models load.
            from keraslm.calibration import read_calibration

            calibration = read_calibration(args.calibration)
        models = [load_model(path) for path in global_paths]
        locals_ = [load_model(path, "local stage") for path in local_paths]
        # Stages in the wrong place, named by path.
        for path, member in zip(global_paths + local_paths, models + locals_):
            if not isinstance(member, LandmarkDetector):
                raise UsageError(f"{path}: a SavedModel is exported already; export its .keras "
                                 "model or run folder instead")
        for path, member in zip(global_paths, models):
            if member.spec.is_local_only:
                raise KeraslmError(
                    f"{path}: a local stage (trained with --crop-shape), not a whole-image model; "
                    f"export it with its global model: keraslm-export GLOBAL {args.base_dir} "
                    f"--refine {path}")
        for path, local in zip(local_paths, locals_):
            if local.spec.global_stages and local.spec.local_stages:
                raise UsageError(f"{path}: a coarse-to-fine run that holds its global stage "
                                 "already (train.py --refine-of): export it alone, "
                                 f"keraslm-export {path} {args.base_dir}")
            if local.spec.global_stages:
                raise UsageError(f"{path}: a whole-image model, not a local stage; --refine "
                                 "takes local stages (train.py --crop-shape)")
        everything = list(zip(global_paths + local_paths, models + locals_))
        for path, member in everything[1:]:  # Named by path: the first file is the reference.
            try:
                everything[0][1].spec.combined_with(member.spec)
            except KeraslmError as error:
                raise ModelFileError(f"{path} does not fit {everything[0][0]}: {error}") from None
        detector = combine_detectors(models + locals_)
        if calibration is not None:
            try:
                detector = combine_detectors([detector], calibration)
            except KeraslmError as error:
                from keraslm.errors import CalibrationError

                raise CalibrationError(f"{args.calibration}: {error}") from None
        if args.mirror_check:
            from keraslm.spec import MirrorCheck

            axis, _, confidence = args.mirror_check.partition(":")
            try:
                check = MirrorCheck(axis, float(confidence))
            except ValueError:
                raise KeraslmError(f"--mirror-check takes AXIS:CONFIDENCE, e.g. x:30. Received: "
                                   f"{args.mirror_check!r}") from None
            detector = LandmarkDetector(detector.spec.replace(mirror_check=check),
                                        detector.networks, detector.local_networks)
        path = export_saved_model(detector, args.base_dir, version=args.version)
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    except OSError as error:  # A full disk, a read-only file system: nothing half-written.
        print(f"error: cannot write into {args.base_dir}: {error}", file=sys.stderr)
        return 1
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)
    print(f"exported {path} ({size / 1e6:.1f} MB)")
    newest = saved_model_versions(args.base_dir)[-1]
    if newest > int(os.path.basename(path)):
        print(f"warning: {args.base_dir} holds version {newest}, which TF Serving serves "
              f"rather than {os.path.basename(path)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
