"""`keraslm-export` / `python -m keraslm export`: trained models as the next version folder of a
TF Serving model (`keraslm.export`)."""
import argparse
import os
import sys

from keraslm.errors import KeraslmError, exit_status


def main(argv=None):
    """`keraslm-export` / `python -m keraslm export`."""
    parser = argparse.ArgumentParser(
        prog="keraslm-export",
        description="Export a trained model (a run folder or its model.keras, as "
        "train.py writes) as the next version folder <base>/<n>/ of a TF Serving model; with "
        "--refine, a coarse-to-fine pair as one SavedModel (signatures serving_default, "
        "landmarks and refine).")
    parser.add_argument("model", help="the global (whole-image) model: run folder or .keras "
                        "file; with --upgrade an existing SavedModel version folder")
    parser.add_argument("base_dir", help="TF Serving model base folder, e.g. saved_models/isbi2015_scn")
    parser.add_argument("--refine", metavar="LOCAL_MODEL",
                        help="the local stage (train.py --crop-shape): run folder or .keras file")
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
            if args.refine:
                raise KeraslmError("--upgrade takes the SavedModel alone (its local stage is in it)")
            path = upgrade_saved_model(args.model, args.base_dir, version=args.version)
            print(f"exported {path}")
            return 0
        model = detector(args.model)
        local_network, local_metadata = model.local_network, model.local_metadata
        if args.refine:
            local = detector(args.refine)
            local_network, local_metadata = local.network, local.metadata
        metadata = dict(model.metadata)
        if args.calibration:
            from keraslm.calibration import check_calibration
            from keraslm.files import read_json

            metadata["calibration"] = read_json(args.calibration, f"{args.calibration}: no such file")
            try:
                check_calibration(metadata["calibration"], metadata["landmark_names"])
            except KeraslmError as error:
                raise KeraslmError(f"{args.calibration}: {error}") from None
        path = export_saved_model(model.network, args.base_dir, metadata,
                                  version=args.version, local_network=local_network,
                                  local_metadata=local_metadata)
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)
    print(f"exported {path} ({size / 1e6:.1f} MB)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
