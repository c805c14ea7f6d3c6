"""Train a heatmap regression network for landmark localization.

With no arguments: a small SpatialConfiguration-Net on the built-in 2D hand phantom (generated
into the cache folder on first use), a few minutes on a 2-core CPU. See --help.
"""
import argparse
import os
import sys

from keraslm.cli import (
    ARCHITECTURE_HELP,
    MODEL_PRESETS,
    HelpFormatter,
    add_dataset_arguments,
    add_split_arguments,
    grid_shape,
    model_option,
    positive_float,
    positive_int,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's start-up noise down.


def parse_args(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.architecture not in ARCHITECTURE_HELP:
        # Not built in: an architecture the program registered (keraslm.models.register_architecture).
        from keraslm.models import ARCHITECTURES

        if args.architecture not in ARCHITECTURES:
            parser.error(f"argument --architecture: invalid choice: {args.architecture!r} "
                         f"(choose from {', '.join(ARCHITECTURES)})")
    return args


def _typed_options(argv):
    """set of str. The argparse destinations of the options typed on the command line."""
    parser = _parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _parser():
    parser = argparse.ArgumentParser(
        prog="keraslm-train",
        description=(
            "Train a CNN that regresses one Gaussian heatmap per landmark (Payer et al. 2016). "
            "Images are resampled once onto a fixed network grid; augmentation (rotation, "
            "translation in mm, scaling, optional elastic deformation, intensity) and heatmap "
            "rendering run batched inside the compiled training step. Writes model.keras, "
            "metrics.json (validation point error in mm), TensorBoard logs and checkpoints "
            "into --output-dir."
        ),
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    add_dataset_arguments(data)
    data.add_argument("--cache-file", help="stream training images through this tf.data cache "
                      "file instead of holding them in memory (for large datasets)")
    add_split_arguments(data, held_out="validation")
    data.add_argument("--train-size", type=int, help="train on a reduced set of this many images")
    model = parser.add_argument_group("model")
    model.add_argument("--architecture", default="scn", metavar="{" + ",".join(ARCHITECTURE_HELP) + "}",
                       help="; ".join(f"{name}: {text}" for name, text in ARCHITECTURE_HELP.items())
                       + " (or one the program registered: keraslm.models.register_architecture)")
    model.add_argument("--model-preset", default="small", choices=list(MODEL_PRESETS),
                       help="layer settings: the paper's, or small ones that train fast on a CPU")
    model.add_argument("--model-option", action="append", default=[], type=model_option,
                       metavar="KEY=VALUE",
                       help="override one model setting, e.g. filters=16 or kernel_size=3 "
                       "(repeatable; values are Python literals)")
    model.add_argument("--grid-shape", type=grid_shape,
                       help="network input grid, array order (2D: H,W; 3D: D,H,W); default: "
                       "planned from the images' physical extent, as many voxels as 64x64 (2D) "
                       "or 32x64x64 (3D) - quick; use e.g. 256,256 for real data (--plan-only "
                       "shows the plan)")
    model.add_argument("--normalization",
                       choices=["equalize_standardize", "standardize", "subtract_mean", "none"],
                       help="intensity normalisation; default: equalize_standardize in 2D (the "
                       "paper's), standardize in 3D (the paper's subtract_mean keeps the scanner's "
                       "intensity scale, on which the default training diverged)")
    model.add_argument("--grid-spacing", type=float,
                       help="mm per grid pixel; default: with --grid-shape the smallest at "
                       "which every image fits, without it the plan's (a voxel budget: "
                       "--plan-only shows it). Alone: the grid shape is the smallest that "
                       "covers every image")
    model.add_argument("--crop-shape", type=grid_shape,
                       help="train the LOCAL stage of a coarse-to-fine model instead: images go "
                       "whole onto a fine grid of --grid-spacing mm and the network learns on "
                       "crops of this shape (array order) around the landmarks, shifted by up to "
                       "the augmentation's translation; predict with "
                       "`keraslm-predict GLOBAL_MODEL --refine LOCAL_MODEL`, or train it "
                       "with --refine-of")
    model.add_argument("--refine-of", metavar="GLOBAL_RUN",
                       help="with --crop-shape: the run folder of the global stage this local "
                       "stage refines (trained on the same split); the run saves both as one "
                       "coarse-to-fine model.keras, reports the pair's validation error and "
                       "exports the pair")
    model.add_argument("--sigma", type=positive_float,
                       help="standard deviation of the target heatmaps' Gaussians in output "
                       "(heatmap) pixels: grid pixels for every architecture but downsampling "
                       "(4 grid pixels per output pixel in 2D) "
                       "(None: the training preset's, 2.0; keep sigma x grid spacing when "
                       "changing the spacing to keep the target's width in mm)")
    model.add_argument("--learn-sigma", action="store_true", default=None,
                       help="learn one target sigma per landmark, starting at --sigma (Payer et "
                       "al. 2019): targets keep the volume of the --sigma Gaussian, so surer "
                       "landmarks get sharper, higher targets; the model decodes with the "
                       "learned values (printed at the end and kept in the model's spec)")
    model.add_argument("--sigma-penalty", type=float,
                       help="strength of the learned sigma's pull towards small values (default "
                       "2.36: a landmark keeps --sigma when its error SD per axis is --sigma)")
    model.add_argument("--landmarks-per-image", type=positive_int,
                       help="local stage: crops per image and step (default: one per landmark)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--training-preset", default="default", choices=["default", "paper"],
                     help="optimiser and augmentation settings (paper: SGD, momentum 0.99)")
    fit.add_argument("--steps", type=positive_int,
                     help="total training steps (preset default: 2000; paper preset 40000 in "
                     "2D, 15000 in 3D); a multiple of --steps-per-epoch, or less than it")
    fit.add_argument("--steps-per-epoch", type=positive_int, default=100,
                     help="steps between validations and checkpoints")
    fit.add_argument("--batch-size", type=positive_int, help="images per step (preset default)")
    fit.add_argument("--learning-rate", type=positive_float,
                     help="initial learning rate (preset default)")
    fit.add_argument("--elastic-mm", type=float, help="elastic deformation amplitude in mm (0 = off)")
    fit.add_argument("--translation-mm", type=float,
                     help="largest random translation per axis in mm (preset default 10); for a "
                     "local stage the largest offset of a crop from its landmark: about the "
                     "coarse stage's error")
    fit.add_argument("--rotation-degrees", type=float,
                     help="largest random rotation in degrees (the training preset's: 15 with "
                     "the default preset, 30 with the paper's)")
    fit.add_argument("--scale-range", type=float,
                     help="largest random isotropic scaling: factors in [1 - this, 1 + this] "
                     "(default preset 0.1, paper preset 0; e.g. 0.03 for images of one "
                     "machine and magnification)")
    fit.add_argument("--blur-mm", type=float,
                     help="random Gaussian blur of every training image with a standard deviation "
                     "up to this many mm (robustness to other X-ray machines' sharpness; e.g. "
                     "1.0; None = off)")
    fit.add_argument("--noise-std", type=float,
                     help="random pixel noise with a standard deviation up to this, in normalised "
                     "intensity units (e.g. 0.2; None = off)")
    fit.add_argument("--flip", dest="flip_axes", metavar="AXES",
                     help="mirror each training sample along these axes with probability 1/2, "
                     "landmarks keeping their names (e.g. x: lateral cephalograms facing left "
                     "or right; not for images with left/right landmark pairs); default off")
    fit.add_argument("--seed", type=int, default=0, help="seeds splits, initialisation and augmentation")
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default=os.path.join("runs", "default"),
                     help="run folder (default: runs/default): a new or empty folder; one that "
                     "holds a finished run, or an interrupted one without --resume, is refused, "
                     "as is one with files of a run's names that train.py did not write")
    run.add_argument("--export-dir", default=argparse.SUPPRESS,
                     help="TF Serving model base folder; the trained model is exported as its "
                     "next version <export-dir>/<n>/ (default: saved_models/<name of "
                     "--output-dir> in the current folder; recorded, so a resumed run exports "
                     "there from any folder)")
    run.add_argument("--no-export", action="store_true", help="do not export a SavedModel")
    run.add_argument("--no-plots", action="store_true",
                     help="skip the closing pictures (validation cumulative error curve and "
                     "truth-vs-prediction overlays on the best, median and worst validation image)")
    run.add_argument("--plan-only", action="store_true",
                     help="print the plan (grid fitted to the images' physical extent, heatmap "
                     "targets, learning rate, batch, steps, each with its reason) from the "
                     "image headers and stop: nothing is trained or written")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in --output-dir from its last finished "
                     "epoch, with the settings its config.json recorded (other flags that would "
                     "change what it trains are refused; a dataset moved since is given with "
                     "--dataset NEW_PLACE)")
    run.add_argument("--distribute", default="none", choices=["none", "mirrored", "multiworker"],
                     help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    run.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="the network's compute precision (variables, loss, targets and decoding "
                     "stay float32; the saved model computes in float32): 'auto' = bfloat16 on "
                     "CPUs with AMX-BF16 or AVX512-BF16 and GPUs of compute capability >= 8.0, "
                     "float16 on older GPUs with tensor cores, float32 otherwise; the choice and "
                     "why are printed and kept in config.json")
    run.add_argument("--jit", default="auto", choices=["auto", "on", "off"],
                     help="XLA: 'on' compiles the whole training step, 'off' nothing, 'auto' the "
                     "whole step on a GPU; on a CPU a short probe (cached per CPU model and "
                     "configuration) times the device stage and the network with and without XLA "
                     "and keeps the faster for each")
    return parser


def _export_dir(args):
    """--export-dir, by default saved_models/<basename of --output-dir>; None with --no-export."""
    if args.no_export:
        return None
    if getattr(args, "export_dir", None):
        return os.path.abspath(args.export_dir)  # Recorded: a resume from elsewhere finds it.
    name = os.path.basename(os.path.normpath(os.path.abspath(args.output_dir)))
    return os.path.abspath(os.path.join("saved_models", name))


def _absolute_path(path):
    """A dataset or cache path as given when it names nothing on disk (phantom2d, isbi2015),
    else absolute: config.json then names the same files from any working folder."""
    return os.path.abspath(path) if path and os.path.exists(path) else path


def _config(args):
    """The TrainingConfig the command line asks for."""
    from keraslm.training import TrainingConfig

    return TrainingConfig(
        dataset=_absolute_path(args.dataset), dataset_root=_absolute_path(args.dataset_root),
        units=args.units,
        image_spacing=args.spacing, architecture=args.architecture,
        model_preset=args.model_preset, training_preset=args.training_preset,
        grid_shape=args.grid_shape, grid_spacing=args.grid_spacing, steps=args.steps,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.learning_rate, fold=args.fold, num_folds=args.num_folds,
        train_ids=_absolute_path(args.train_ids), test_ids=_absolute_path(args.test_ids),
        test_fraction=args.test_fraction,
        train_size=args.train_size, output_dir=args.output_dir, seed=args.seed,
        resume=args.resume, distribute=args.distribute, precision=args.precision,
        jit=args.jit, elastic_mm=args.elastic_mm, translation_mm=args.translation_mm,
        blur_mm=args.blur_mm, noise_std=args.noise_std, rotation_degrees=args.rotation_degrees,
        scale=args.scale_range, flip_axes=args.flip_axes, model_overrides=dict(args.model_option),
        ndim=args.ndim, cache_file=_absolute_path(args.cache_file), normalization=args.normalization, export_dir=_export_dir(args),
        crop_shape=args.crop_shape, landmarks_per_image=args.landmarks_per_image,
        refine_of=args.refine_of, sigma=args.sigma,
        learn_sigma=args.learn_sigma, sigma_penalty=args.sigma_penalty,
        plots=not args.no_plots, plan_only=args.plan_only,
    )


#: config.json entries that are tuples in a TrainingConfig.
_TUPLE_SETTINGS = ("grid_shape", "crop_shape", "image_spacing")
#: TrainingConfig settings set by command-line options of another name.
_OPTIONS_OF = {"image_spacing": ("spacing",), "scale": ("scale_range",),
               "model_overrides": ("model_option",), "export_dir": ("export_dir", "no_export"),
               "plots": ("no_plots",)}


def _resumed_config(args, argv):
    """--resume: the run's own settings from its config.json, with the options typed on this
    command line on top (`keraslm.training.train` refuses those that change what the run
    trains; where and how it runs - export, plots, XLA, distribution - may change)."""
    from keraslm.errors import KeraslmError
    from keraslm.run_folder import RunFolder
    from keraslm.training import TrainingConfig

    asked = _config(args)
    folder = RunFolder(args.output_dir)
    if not os.path.isfile(folder.config_path):
        return asked  # Nothing recorded yet (or nothing to resume: train says which).
    saved = folder.read_config()
    defaults = _config(parse_args(["--output-dir", args.output_dir])).to_dict()
    settings = {key: value for key, value in saved.items() if key in defaults}
    for key in _TUPLE_SETTINGS:
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    spacing = settings.get("grid_spacing")
    if isinstance(spacing, list):  # Recorded per axis; isotropic grids are asked for by one number.
        settings["grid_spacing"] = spacing[0] if len(set(spacing)) == 1 else tuple(spacing)
    typed = _typed_options(argv)
    given = {key: value for key, value in asked.to_dict().items()
             if typed & set(_OPTIONS_OF.get(key, (key,)))}
    for key in ("dataset", "dataset_root", "train_ids", "test_ids"):
        recorded = settings.get(key)
        if (key not in given and isinstance(recorded, str) and os.path.isabs(recorded)
                and not os.path.exists(recorded)):
            option = "--" + key.replace("_", "-")
            raise KeraslmError(
                f"--resume: the run's {option} {recorded} (its config.json) no longer exists; "
                f"moved? give its new place: train.py --resume --output-dir {args.output_dir} "
                f"{option} NEW_PLACE")
    return TrainingConfig(**{**settings, **given, "resume": True, "output_dir": args.output_dir})


def main(argv=None):
    args = parse_args(argv)
    from keraslm.errors import KeraslmError, exit_status
    from keraslm.training import train

    try:
        config = _resumed_config(args, argv) if args.resume else _config(args)
        result = train(config, log=lambda message: print(message, flush=True))
    except (KeraslmError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    except KeyboardInterrupt:
        from keraslm.run_folder import RunFolder

        if RunFolder(args.output_dir).has_checkpoints():
            print(f"\ninterrupted: {args.output_dir} keeps the last finished epoch; continue "
                  f"with: python train.py --resume --output-dir {args.output_dir}",
                  file=sys.stderr)
        else:
            print("\ninterrupted before the first epoch was saved: nothing to resume",
                  file=sys.stderr)
        return 130
    if config.run.plan_only:
        print("--plan-only: nothing was trained")
        return 0
    summary = result.summary
    if not summary["count"]:
        print("no validation landmarks with ground truth: no point error to report")
    else:
        print(
            f"validation point error over {summary['count']} landmarks: median "
            f"{summary['median_mm']:.2f} mm, mean {summary['mean_mm']:.2f} +- {summary['std_mm']:.2f} mm, "
            f"outliers > 10 mm: {summary['outliers']} ({summary['outlier_percent']:.1f} %), "
            f"SDR@2mm {summary['sdr_2.0mm_percent']:.1f} %"
        )
        from keraslm.evaluation import format_baseline

        print(format_baseline(summary, result.baseline_summary))
    print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min; model: {result.model_path}")
    for path in result.pictures:
        print(f"picture: {path}")
    if result.export_path:
        print(f"SavedModel for TF Serving: {result.export_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
