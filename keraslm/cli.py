"""Argument parsing shared by the scripts (`train.py`, `evaluate.py`, `experiments/`)."""
import argparse


def grid_shape(text):
    """argparse type: "128,128" or "32x64x64" -> a tuple of 2 or 3 positive ints."""
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,128 or 32x64x64, got {text!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 positive sizes, got {text!r}")
    return shape


def add_split_arguments(group, held_out="held-out"):
    """Adds the options that choose a dataset split as `keraslm.data.select_split` does:
    --fold, --num-folds, --train-ids, --test-ids, --test-fraction.

    Args:
        group: argparse parser or argument group.
        held_out: str. What the held-out part is called in the help texts.
    """
    group.add_argument("--fold", type=int, help=f"cross-validation fold to use as the {held_out} set (0-based)")
    group.add_argument("--num-folds", type=int, default=5, help="number of cross-validation folds")
    group.add_argument("--train-ids", help="file with the training record ids, one per line")
    group.add_argument("--test-ids", help=f"file with the {held_out} record ids, one per line")
    group.add_argument("--test-fraction", type=float, default=0.2,
                       help=f"{held_out} share when neither --fold nor id files are given "
                       "(0: use every image, hold none out)")


def apply_mode_defaults(args, defaults):
    """Fill every option of `args` that was not given (None) from `defaults` (a dict, e.g. an
    experiment's FULL or QUICK sizes); returns `args`."""
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args
