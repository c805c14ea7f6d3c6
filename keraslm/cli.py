"""Argument parsing shared by the scripts (`train.py`, `evaluate.py`, `experiments/`)."""
import argparse
import ast
import math
import sys
import warnings


#: The built-in architectures (`keraslm.models.ARCHITECTURES`) and model presets
#: (`keraslm.models.PRESET_NAMES`), named here so that `--help` answers without loading
#: TensorFlow (importing `keraslm.models` does); a test keeps them equal to the registry.
ARCHITECTURE_HELP = {
    "downsampling": "Downsampling-Net (Payer et al. 2016, Fig. 2a)",
    "convonly": "ConvOnly-Net (Fig. 2b)",
    "unet": "U-Net (Fig. 2c)",
    "scn": "SpatialConfiguration-Net (Fig. 2d)",
    "scn2019": "the authors' 2019 SCN (U-Net local appearance x spatial configuration)",
}
MODEL_PRESETS = ("paper", "small")


def _show_keraslm_warning(message, category, filename, lineno, file=None, line=None,
                          _default=warnings.showwarning):
    """The commands print keraslm's own warnings as one "warning: ..." line (others as Python
    does)."""
    from keraslm.errors import KeraslmWarning

    if issubclass(category, KeraslmWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


warnings.showwarning = _show_keraslm_warning  # The scripts import this module; not keraslm.


def grid_shape(text):
    """argparse type: "128,128" or "32x64x64" -> a tuple of 2 or 3 positive ints."""
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,128 or 32x64x64, got {text!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 positive sizes, got {text!r}")
    return shape


def model_option(text):
    """argparse type: "dropout=0.5" -> ("dropout", 0.5); values are Python literals, anything
    else a plain string (e.g. kernel_initializer=he_normal)."""
    key, separator, value = text.partition("=")
    if not separator or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def spacing(text):
    """argparse type: "0.1" (all axes) or "0.1,0.12" (x, y) mm per pixel -> float or tuple."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected mm per pixel like 0.1 or 0.1,0.12, got {text!r}") from None
    if not values or len(values) > 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected 1 to 3 positive finite numbers, got {text!r}")
    return values[0] if len(values) == 1 else values


def positive_int(text):
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each option's default - unless it has none (None / False) or its help
    already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def ensemble_paths(text):
    """argparse type: "runs/a" -> "runs/a"; "runs/a,runs/b" -> ["runs/a", "runs/b"], an
    ensemble whose members' points are averaged (`keraslm.prediction.load_predictor`). A
    path that exists as given is one member even if it holds a comma."""
    import os

    if "," not in text or os.path.exists(text):
        return text
    members = text.split(",")
    if any(not member for member in members):
        raise argparse.ArgumentTypeError(
            f"expected PATH or PATH,PATH,... (an ensemble), got {text!r} (an empty member)")
    seen = {}
    for member in members:  # One model twice would weigh it double and pass as two.
        key = os.path.realpath(member)
        if key in seen:
            raise argparse.ArgumentTypeError(
                f"{text!r} names one model twice ({seen[key]!r} and {member!r}); an ensemble's "
                "members are different trainings")
        seen[key] = member
    return members


def add_dataset_arguments(group):
    """Adds the options that name a dataset as `keraslm.datasets.load_dataset` does:
    --dataset, --dataset-root (alias --image-root), --units, --spacing, --ndim."""
    group.add_argument(
        "--dataset", default="phantom2d",
        help="phantom2d, phantom3d, isbi2015; a landmark CSV (id,<name>_x,<name>_y[,<name>_z] / "
        "id,landmark,x,y[,z] / headerless with --ndim); or a folder holding dataset.json, one "
        "landmark CSV, or images each with a landmark file of the same name (3D Slicer .mrk.json "
        "or .fcsv, or .txt with x,y[,z] per line)")
    group.add_argument(
        "--dataset-root", "--image-root", dest="dataset_root",
        help="isbi2015's folder (e.g. ../shared/data/isbi2015-train); the folder a CSV's image "
        "ids or paths refer to (default: the CSV's folder); where to generate a phantom")
    group.add_argument("--units", choices=["index", "mm"],
                       help="units of CSV and .txt landmark coordinates: index (pixels) or mm "
                       "(physical, LPS); required for them, Slicer markups are mm")
    group.add_argument("--spacing", type=spacing, metavar="MM",
                       help="mm per pixel of plain images (PNG/JPEG hold none; required for them "
                       "unless the dataset's dataset.json gives it), e.g. 0.1 for ISBI 2015, or x,y")
    group.add_argument("--ndim", type=int, choices=[2, 3],
                       help="expected dimension: an error if the dataset differs; needed for "
                       "headerless CSVs")


def add_split_arguments(group, held_out="held-out"):
    """Adds the options that choose a dataset split as `keraslm.data.select_split` does:
    --fold, --num-folds, --train-ids, --test-ids, --test-fraction.

    Args:
        group: argparse parser or argument group.
        held_out: str. What the held-out part is called in the help texts.
    """
    group.add_argument("--fold", type=int, help=f"cross-validation fold to use as the {held_out} set (0-based)")
    group.add_argument("--num-folds", type=int, default=5, help="number of cross-validation folds")
    group.add_argument("--train-ids", help="file with the training record ids, one per line "
                       "(with --test-ids: give both or neither)")
    group.add_argument("--test-ids", help=f"file with the {held_out} record ids, one per line "
                       "(with --train-ids: give both or neither)")
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


def typed_options(parser, argv):
    """set of str. The destinations of the options typed in `argv` (None: sys.argv[1:]), also
    those typed with their default value (`--dataset phantom2d`)."""
    defaults = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in defaults:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults:
            action.default = default
