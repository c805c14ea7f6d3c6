"""`keraslm-export` / `python -m keraslm export`: trained models as the next version folder of a
TF Serving model (`keraslm.export`)."""
import argparse
import os
import sys

from keraslm.cli import ensemble_paths
from keraslm.errors import KeraslmError, exit_status


def main(argv=None):
    """`keraslm-export` / `python -m keraslm export`."""
    parser = argparse.ArgumentParser(
        prog="keraslm-export",
        description="Export a trained model (a run folder or its model.keras, as "
        "train.py writes) as the next version folder <base>/<n>/ of a TF Serving model; with "
        "--refine, a coarse-to-fine pair as one SavedModel. Signatures: serving_default, "
        "predict_image and predict_array (image file bytes or pixels in, landmarks in mm out), "
        "and the grid-level grid_heatmaps, landmarks and (with --refine) refine; comma-joined "
        "models, an ensemble, have the image signatures only.")
    parser.add_argument("model", type=ensemble_paths,
                        help="the global (whole-image) model: run folder or .keras "
                        "file; with --upgrade an existing SavedModel version folder. A,B: an "
                        "ensemble of global stages (their points averaged)")
    parser.add_argument("base_dir", help="TF Serving model base folder, e.g. saved_models/isbi2015_scn")
    parser.add_argument("--refine", metavar="LOCAL_MODEL", type=ensemble_paths,
                        help="the local stage (train.py --crop-shape): run folder or .keras "
                        "file; A,B: an ensemble of local stages, each refining the global "
                        "estimate, their points averaged")
    parser.add_argument("--version", type=int, help="version number (default: the next one)")
    parser.add_argument("--upgrade", action="store_true",
                        help="MODEL is a SavedModel of an earlier keraslm: export its weights again "
                        "with the current signatures (predict_image / predict_array)")
    parser.add_argument("--calibration", metavar="JSON",
                        help="a calibration (evaluate.py --calibrate) to store in the model, so "
                        "every prediction carries expected_error_mm per landmark")
    args = parser.parse_args(argv)
    # Imported after the arguments are parsed: it loads TensorFlow, which --help does not need.
    from keraslm.export import export_saved_model, upgrade_saved_model

    def detector(path):
        """The LandmarkDetector of a run folder or `.keras` file."""
        from keraslm.detector import load_detector

        from keraslm.run_folder import RunFolder

        return load_detector(RunFolder(path).model_path if os.path.isdir(path) else path)

    try:
        if args.upgrade:
            if isinstance(args.model, list):
                raise KeraslmError("--upgrade takes one SavedModel version folder")
            if args.refine:
                raise KeraslmError("--upgrade takes the SavedModel alone (its local stage is in it)")
            path = upgrade_saved_model(args.model, args.base_dir, version=args.version)
            print(f"exported {path}")
            return 0
        global_paths = args.model if isinstance(args.model, list) else [args.model]
        local_paths = (args.refine if isinstance(args.refine, list) else [args.refine]
                       ) if args.refine else []
        models = [detector(path) for path in global_paths]
        model = models[0]
        local_networks = [] if model.local_network is None else [model.local_network]
        local_metadatas = [] if model.local_metadata is None else [model.local_metadata]
        if local_paths:
            locals_ = [detector(path) for path in local_paths]
            local_networks = [local.network for local in locals_]
            local_metadatas = [local.metadata for local in locals_]
        # Stages in the wrong place, named by path (export_saved_model's own checks cannot).
        for path, member in zip(global_paths, models):
            if member.metadata.get("stage", "global") != "global":
                raise KeraslmError(
                    f"{path}: a local stage (trained with --crop-shape), not a whole-image model; "
                    f"export it with its global model: keraslm-export GLOBAL {args.base_dir} "
                    f"--refine {path}")
            if len(models) > 1 and member.local_network is not None:
                raise KeraslmError(f"{path}: an ensemble's global member holds a local stage; "
                                   "give the local stages with --refine")
        for path, local in zip(local_paths, local_metadatas):
            if local.get("stage") != "local":
                raise KeraslmError(f"{path}: a whole-image model, not a local stage; --refine "
                                   "takes local stages (train.py --crop-shape)")
        metadata = dict(model.metadata)
        if args.calibration:
            from keraslm.calibration import check_calibration
            from keraslm.files import read_json

            metadata["calibration"] = read_json(args.calibration, f"{args.calibration}: no such file")
            try:
                check_calibration(metadata["calibration"], metadata["landmark_names"])
            except KeraslmError as error:
                raise KeraslmError(f"{args.calibration}: {error}") from None
        networks = [member.network for member in models]
        metadatas = [metadata] + [member.metadata for member in models[1:]]
        one = len(models) == 1
        path = export_saved_model(
            networks[0] if one else networks, args.base_dir, metadatas[0] if one else metadatas,
            version=args.version,
            local_network=(None if not local_networks else
                           local_networks[0] if len(local_networks) == 1 else local_networks),
            local_metadata=(None if not local_metadatas else
                            local_metadatas[0] if len(local_metadatas) == 1 else local_metadatas))
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)
    print(f"exported {path} ({size / 1e6:.1f} MB)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
