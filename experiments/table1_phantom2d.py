"""Table 1 of Payer et al. 2016 on the built-in 2D hand phantom (see --help).

The four architectures, 3-fold cross-validation, the full training set and a reduced set of
10 training images with heavier augmentation (elastic deformation); errors pooled over the
folds. Writes table.md, results.json and one run folder per (set, architecture, fold) into
--output-dir; finished runs are skipped when run again.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keraslm.cli import HelpFormatter, apply_mode_defaults, grid_shape  # noqa: E402

#: Full mode: the CPU-feasible setting. Quick mode: a smoke test of a few seconds per run.
FULL = dict(grid_shape=(64, 64), steps=1000, batch_size=8, folds=None, reduced_size=10,
            num_images=None, image_size=None, filters=None, jit="auto")
QUICK = dict(grid_shape=(32, 32), steps=2, batch_size=2, folds=1, reduced_size=4,
             num_images=12, image_size=64, filters=4, jit="off")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Table 1 analogue (Payer et al. 2016) on the 2D phantom: Downsampling-Net, "
            "ConvOnly-Net, U-Net and SpatialConfiguration-Net, 3-fold cross-validation, full "
            "training set and a reduced set of 10 images with elastic augmentation. Full mode "
            f"(default): the 100-image phantom (256x256 px, about 1 mm), grid {FULL['grid_shape']}, "
            f"{FULL['steps']} steps of batch {FULL['batch_size']}, small model preset - 24 runs. "
            "--quick: a 12-image phantom, 32x32 grid, 2 steps, 4 filters, first fold only."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test sizes")
    parser.add_argument("--output-dir", default=os.path.join("experiments", "results", "table1_phantom2d"))
    parser.add_argument("--architectures", default="downsampling,convonly,unet,scn")
    parser.add_argument("--grid-shape", type=grid_shape, help=f"rows,columns (full: {FULL['grid_shape']})")
    parser.add_argument("--steps", type=int, help=f"training steps per run (full: {FULL['steps']})")
    parser.add_argument("--batch-size", type=int, help=f"(full: {FULL['batch_size']})")
    parser.add_argument("--num-folds", type=int, default=3)
    parser.add_argument("--folds", type=int, help="train only the first FOLDS folds (default: all)")
    parser.add_argument("--reduced-size", type=int, help="training images of the reduced set (full: 10; 0 = none)")
    parser.add_argument("--reduced-elastic-mm", type=float, default=4.0,
                        help="elastic deformation amplitude for the reduced set")
    parser.add_argument("--model-preset", default="small", choices=("small", "paper"))
    parser.add_argument("--filters", type=int, help="override the preset's filter count")
    parser.add_argument("--jit", choices=("auto", "on", "off"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return apply_mode_defaults(args, QUICK if args.quick else FULL)


def main(argv=None):
    args = parse_args(argv)
    from keraslm.errors import KeraslmError
    from keraslm.experiments import table1

    try:
        result = table1(
            args.output_dir, architectures=args.architectures.split(","), grid_shape=args.grid_shape,
            steps=args.steps, batch_size=args.batch_size, num_folds=args.num_folds, folds=args.folds,
            reduced_size=args.reduced_size or None, reduced_elastic_mm=args.reduced_elastic_mm,
            preset=args.model_preset, overrides={"filters": args.filters} if args.filters else None,
            num_images=args.num_images, image_size=args.image_size, jit=args.jit, seed=args.seed,
            log=print,
        )
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
