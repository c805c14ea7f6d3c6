"""Table 2 of Payer et al. 2016 on the built-in 3D hand phantom (see --help).

The four architectures, five random splits with the paper's 43/17 train/test ratio; errors
pooled over the splits. Writes table.md, results.json and one run folder per (architecture,
split) into --output-dir; finished runs are skipped when run again.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keraslm.cli import HelpFormatter, apply_mode_defaults, grid_shape  # noqa: E402

#: Full mode: the CPU-feasible setting. Quick mode: a smoke test of a few seconds per run.
FULL = dict(grid_shape=(16, 32, 32), steps=1000, batch_size=2, num_splits=5, num_images=None,
            image_size=None, filters=None, jit="auto")
QUICK = dict(grid_shape=(16, 16, 16), steps=2, batch_size=2, num_splits=1, num_images=8,
             image_size=(32, 32, 16), filters=4, jit="off")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Table 2 analogue (Payer et al. 2016) on the 3D phantom: Downsampling-Net, "
            "ConvOnly-Net, U-Net and SpatialConfiguration-Net, five random splits holding out "
            "17/60 of the images (the paper: 43 training / 17 test). Full mode (default): the "
            f"40-image phantom (64x96x32 voxels), grid {FULL['grid_shape']} (z, y, x), "
            f"{FULL['steps']} steps of batch {FULL['batch_size']}, small model preset - 20 runs. "
            "--quick: an 8-image phantom, 16x16x16 grid, 2 steps, 4 filters, one split."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test sizes")
    parser.add_argument("--output-dir", default=os.path.join("experiments", "results", "table2_phantom3d"))
    parser.add_argument("--architectures", default="downsampling,convonly,unet,scn")
    parser.add_argument("--grid-shape", type=grid_shape, help=f"z,y,x (full: {FULL['grid_shape']})")
    parser.add_argument("--steps", type=int, help=f"training steps per run (full: {FULL['steps']})")
    parser.add_argument("--batch-size", type=int, help=f"(full: {FULL['batch_size']})")
    parser.add_argument("--num-splits", type=int, help="random splits (full: 5)")
    parser.add_argument("--test-fraction", type=float, default=17 / 60)
    parser.add_argument("--model-preset", default="small", choices=("small", "paper"))
    parser.add_argument("--filters", type=int, help="override the preset's filter count")
    parser.add_argument("--jit", choices=("auto", "on", "off"))
    parser.add_argument("--seed", type=int, default=0, help="split i uses seed SEED + i")
    args = parser.parse_args(argv)
    return apply_mode_defaults(args, QUICK if args.quick else FULL)


def main(argv=None):
    args = parse_args(argv)
    from keraslm.errors import KeraslmError
    from keraslm.experiments import table2

    try:
        result = table2(
            args.output_dir, architectures=args.architectures.split(","), grid_shape=args.grid_shape,
            steps=args.steps, batch_size=args.batch_size, num_splits=args.num_splits,
            test_fraction=args.test_fraction, preset=args.model_preset,
            overrides={"filters": args.filters} if args.filters else None,
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
