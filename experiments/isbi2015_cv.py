"""5-fold cross-validation of SCN and U-Net on the ISBI 2015 training images (see --help).

Reports MRE +- SD, SDR at 2 / 2.5 / 3 / 4 mm, a per-landmark table and the cumulative error
curve (cumulative_error.png), pooled over the folds. Writes table.md, results.json and one run
folder per (architecture, fold) into --output-dir; finished runs are skipped when run again.
Exits with a message (status 0) when the dataset folder is absent.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keraslm.cli import HelpFormatter, apply_mode_defaults, grid_shape, model_option  # noqa: E402

DEFAULT_ROOT = os.path.join("..", "shared", "data", "isbi2015-train")
#: Full mode: the CPU-feasible setting. Quick mode: a smoke test of a few seconds per run.
FULL = dict(grid_shape=(128, 104), steps=1500, batch_size=8, folds=None, num_images=None,
            filters=None, jit="auto", local_crop_shape=(64, 64), local_spacing=0.4,
            local_steps=1500, local_batch_size=2, local_translation_mm=6.0)
QUICK = dict(grid_shape=(32, 32), steps=2, batch_size=2, folds=1, num_images=10, filters=4,
             jit="off", local_crop_shape=(16, 16), local_spacing=4.0, local_steps=2,
             local_batch_size=1, local_translation_mm=6.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "5-fold cross-validation of SpatialConfiguration-Net and U-Net on the 150 ISBI 2015 "
            "training cephalograms (1935x2400 px at 0.1 mm). Full mode (default): grid "
            f"{FULL['grid_shape']} (rows, columns) = 1.875 mm spacing, {FULL['steps']} steps of "
            f"batch {FULL['batch_size']}, small model preset, and per fold a local U-Net on "
            f"{FULL['local_crop_shape'][0]}x{FULL['local_crop_shape'][1]} crops at "
            f"{FULL['local_spacing']} mm ({FULL['local_steps']} steps) that refines both "
            "(coarse-to-fine) - 15 runs. --quick: 10 images, 32x32 grid (7.5 mm), 2 steps, 4 "
            "filters, first fold only."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test sizes")
    parser.add_argument("--dataset-root", default=DEFAULT_ROOT, help="ISBI 2015 training folder")
    parser.add_argument("--output-dir", default=os.path.join("experiments", "results", "isbi2015_cv"))
    parser.add_argument("--architectures", default="scn,unet")
    parser.add_argument("--grid-shape", type=grid_shape, help=f"rows,columns (full: {FULL['grid_shape']})")
    parser.add_argument("--steps", type=int, help=f"training steps per run (full: {FULL['steps']})")
    parser.add_argument("--batch-size", type=int, help=f"(full: {FULL['batch_size']})")
    parser.add_argument("--num-folds", type=int, default=5)
    parser.add_argument("--folds", type=int, help="train only the first FOLDS folds (default: all)")
    parser.add_argument("--num-images", type=int, help="cross-validate a random subset (default: all)")
    parser.add_argument("--model-preset", default="small", choices=("small", "paper"))
    parser.add_argument("--filters", type=int, help="override the preset's filter count")
    parser.add_argument("--model-option", action="append", default=[], type=model_option,
                        metavar="KEY=VALUE",
                        help="override one model setting of the global networks, e.g. "
                        "dropout=0.5 (repeatable; as train.py --model-option)")
    parser.add_argument("--rotation-degrees", type=float,
                        help="largest random rotation of the global stage's training images "
                        "(default: the training preset's, 15 degrees; as train.py)")
    parser.add_argument("--scale-range", type=float,
                        help="largest random scaling of the global stage's training images: "
                        "factors in [1 - this, 1 + this] (default: the preset's, 0.1)")
    parser.add_argument("--jit", choices=("auto", "on", "off"))
    parser.add_argument("--seed", type=int, default=0)
    local = parser.add_argument_group("local (refinement) stage")
    local.add_argument("--no-local", action="store_true", help="single-stage models only")
    local.add_argument("--local-crop-shape", type=grid_shape,
                       help=f"crop rows,columns (full: {FULL['local_crop_shape']})")
    local.add_argument("--local-spacing", type=float,
                       help=f"mm per pixel of the crops (full: {FULL['local_spacing']})")
    local.add_argument("--local-steps", type=int, help=f"(full: {FULL['local_steps']})")
    local.add_argument("--local-batch-size", type=int,
                       help=f"images per step, each giving one crop per landmark (full: "
                       f"{FULL['local_batch_size']})")
    local.add_argument("--local-translation-mm", type=float,
                       help="largest training offset of a crop from its landmark per axis "
                       f"(full: {FULL['local_translation_mm']})")
    local.add_argument("--local-model-option", action="append", default=[], type=model_option,
                       metavar="KEY=VALUE",
                       help="override one model setting of the local network (repeatable; "
                       "default: the global networks' --filters / --model-option)")
    local.add_argument("--local-elastic-mm", type=float,
                       help="elastic deformation of the local stage's crops (as train.py "
                       "--elastic-mm; default none)")
    ensemble = parser.add_argument_group(
        "ensemble (keraslm.prediction.load_predictor): second members per fold, reported as "
        "extra rows")
    ensemble.add_argument("--ensemble-grid-shape", type=grid_shape, metavar="ROWS,COLUMNS",
                          help="also train a second global stage per fold and architecture on "
                          "this grid (otherwise the same settings)")
    ensemble.add_argument("--ensemble-local-elastic-mm", type=float, metavar="MM",
                          help="also train a second local stage per fold, as the first but with "
                          "this elastic deformation of the crops (0: none)")
    args = parser.parse_args(argv)
    if args.ensemble_local_elastic_mm is not None and args.no_local:
        parser.error("--ensemble-local-elastic-mm needs the local stage (drop --no-local)")
    return apply_mode_defaults(args, QUICK if args.quick else FULL)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.dataset_root):
        print(f"skipped: the ISBI 2015 training folder {args.dataset_root} does not exist "
              "(pass --dataset-root)")
        return 0
    from keraslm.errors import KeraslmError
    from keraslm.experiments import LocalStageSettings, isbi2015_cv

    local = None if args.no_local else LocalStageSettings(
        crop_shape=args.local_crop_shape, grid_spacing=args.local_spacing,
        steps=args.local_steps, batch_size=args.local_batch_size,
        translation_mm=args.local_translation_mm,
        model_overrides=dict(args.local_model_option) if args.local_model_option else None,
        elastic_mm=args.local_elastic_mm)
    ensemble_local = None
    if args.ensemble_local_elastic_mm is not None:
        import dataclasses

        ensemble_local = dataclasses.replace(local, elastic_mm=args.ensemble_local_elastic_mm)
    overrides = {**({"filters": args.filters} if args.filters else {}), **dict(args.model_option)}

    try:
        result = isbi2015_cv(
            args.output_dir, args.dataset_root, architectures=args.architectures.split(","),
            grid_shape=args.grid_shape, steps=args.steps, batch_size=args.batch_size,
            num_folds=args.num_folds, folds=args.folds, num_images=args.num_images,
            preset=args.model_preset, overrides=overrides or None,
            jit=args.jit, seed=args.seed, log=print, local=local,
            rotation_degrees=args.rotation_degrees, scale_range=args.scale_range,
            ensemble_grid_shape=args.ensemble_grid_shape, ensemble_local=ensemble_local,
        )
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
