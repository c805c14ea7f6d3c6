"""`keraslm-dataset` (also `python -m keraslm dataset`): generate a built-in phantom dataset,
or load any dataset and summarise it.

    keraslm-dataset                                 # the default 2D phantom, into the cache
    keraslm-dataset my_xrays/ --units index --spacing 0.1
    keraslm-dataset check my_xrays/ --units index --spacing 0.1   # findings + overview picture
    keraslm-dataset init my_xrays/ --units index --spacing 0.1    # writes my_xrays/dataset.json
    keraslm-dataset phantom3d --root /tmp/p3 --num-images 20
    keraslm-dataset isbi2015 --root ../shared/data/isbi2015-train
"""
import argparse
import os
import sys
import time

import numpy as np

from keraslm.cli import spacing
from keraslm.datasets import BUILTIN_DATASETS, cache_dir, load_dataset, make_phantom
from keraslm.errors import KeraslmError, exit_status


def _parser():
    parser = argparse.ArgumentParser(
        prog="keraslm-dataset",
        epilog="Subcommands: 'keraslm-dataset check DATASET' (findings, overview picture) and "
        "'keraslm-dataset init FOLDER' (writes the inferred dataset.json); see their --help.",
        description=(
            "Generate a built-in synthetic phantom dataset (hand-like 2D radiographs with 37 "
            "landmarks or 3D volumes with 28, in PNG/DICOM/NIfTI files with landmarks in mm), "
            "or load a dataset and summarise it. Generated datasets are cached: running again "
            "with the same options reuses the folder."
        ),
    )
    parser.add_argument(
        "dataset",
        nargs="?",
        default="phantom2d",
        help=f"one of {', '.join(BUILTIN_DATASETS)}, a landmark CSV, or a folder (dataset.json, one "
        "landmark CSV, or images with a .mrk.json / .fcsv / .txt landmark file each); "
        "default: phantom2d",
    )
    parser.add_argument("--units", choices=["index", "mm"],
                        help="units of CSV / .txt landmark coordinates (Slicer markups are mm)")
    parser.add_argument("--spacing", type=spacing, metavar="MM",
                        help=_SPACING_HELP)
    parser.add_argument("--ndim", type=int, choices=[2, 3], help=_NDIM_HELP)
    parser.add_argument(
        "--root",
        help=f"where to generate a phantom (default: {cache_dir()}/<dataset>), the isbi2015 "
        "folder, or the folder a CSV's image ids refer to (default: the CSV's folder)",
    )
    parser.add_argument("--num-images", type=int, help="phantom images to generate (default 100 in 2D, 40 in 3D)")
    parser.add_argument("--seed", type=int, default=0, help="phantom random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing phantom folder")
    return parser


_SPACING_HELP = ("mm per pixel of plain images (PNG/JPEG hold none; required for them unless "
                 "dataset.json gives it): 0.1 or x,y")
_NDIM_HELP = ("expected dimension: an error if the dataset differs; needed for headerless CSVs "
              "(id,x0,y0,...)")


def _data_arguments(parser):
    parser.add_argument("dataset", help="a landmark CSV, a dataset folder, or a built-in name")
    parser.add_argument("--root", help="image folder of a CSV; isbi2015's folder")
    parser.add_argument("--units", choices=["index", "mm"],
                        help="units of CSV / .txt landmark coordinates (Slicer markups are mm)")
    parser.add_argument("--spacing", type=spacing, metavar="MM", help=_SPACING_HELP)
    parser.add_argument("--ndim", type=int, choices=[2, 3], help=_NDIM_HELP)


def check_main(argv):
    """`keraslm-dataset check DATASET`: summary, findings, overview picture; exit 1 on errors."""
    from keraslm.datasets.check import check_dataset, format_check, write_overview

    parser = argparse.ArgumentParser(
        prog="keraslm-dataset check",
        description="Check a dataset before training: a summary (images, sizes, spacings and "
        "where they came from, landmarks missing per landmark) and findings that name the file "
        "and landmark - unreadable images, landmarks outside their image, two landmarks at the "
        "same place (errors), a landmark far from where the others put it (a likely "
        "mislabelled or swapped point) and mixed pixel spacings (warnings). Writes an overview "
        "picture of all images' landmarks on the mean shape. Exit status 2 when the dataset "
        "cannot be described as given (a missing --units, options contradicting dataset.json), "
        "else 1 when there are "
        "errors.")
    _data_arguments(parser)
    parser.add_argument("--far-sd", type=float, default=4.0,
                        help="standard deviations that make a landmark far from its mean "
                        "position (default 4.0)")
    parser.add_argument("--overview", default="dataset_overview.png",
                        help="where to write the overview picture (default: "
                        "dataset_overview.png in the current folder)")
    args = parser.parse_args(argv)
    if not args.far_sd > 0:
        parser.error(f"--far-sd must be a number > 0. Received: {args.far_sd}")
    try:
        from keraslm.files import check_output_folder

        check_output_folder(os.path.dirname(os.path.abspath(args.overview)), "--overview's folder")
        if os.path.isdir(args.overview):
            raise KeraslmError(f"--overview {args.overview} is a folder; give a .png file path")
        dataset = load_dataset(args.dataset, root=args.root, units=args.units, spacing=args.spacing,
                               ndim=args.ndim)
        check = check_dataset(dataset, far_sd=args.far_sd,
                              progress=lambda message: print(message, flush=True))
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    for line in format_check(check):
        print(line)
    if write_overview(args.overview, check, dataset.landmark_names):
        print(f"overview: {args.overview}")
    return 1 if check.errors else 0


def init_main(argv):
    """`keraslm-dataset init FOLDER`: write the dataset.json inferred for the folder."""

    from keraslm.data import DATASET_JSON
    from keraslm.datasets.check import describe_folder
    from keraslm.files import write_json

    parser = argparse.ArgumentParser(
        prog="keraslm-dataset init",
        description="Write FOLDER/dataset.json describing the folder as keraslm reads it (its "
        "one landmark CSV or the landmark files beside its images, units, plain-image spacing, "
        "landmark names), so the choice is visible and editable; --dataset FOLDER then reads it.")
    parser.add_argument("folder", help="the dataset folder (images and their landmarks); "
                        "refused when it holds a dataset.json already")
    parser.add_argument("--units", choices=["index", "mm"],
                        help="units of CSV / .txt landmark coordinates (Slicer markups are mm)")
    parser.add_argument("--spacing", type=spacing, metavar="MM",
                        help="mm per pixel of plain images (PNG/JPEG hold none; required for "
                        "them): 0.1 or x,y; recorded in dataset.json")
    parser.add_argument("--ndim", type=int, choices=[2, 3], help=_NDIM_HELP)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.folder):
        parser.error(f"{args.folder}: not a folder; init describes a folder of images and "
                     "their landmarks")
    try:
        description, dataset = describe_folder(args.folder, units=args.units, spacing=args.spacing,
                                               ndim=args.ndim)
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    path = os.path.join(args.folder, DATASET_JSON)
    write_json(path, description)
    print(f"wrote {path}: {len(dataset)} {dataset.ndim}D images, {dataset.num_landmarks} landmarks")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "check":
        return check_main(argv[1:])
    if argv and argv[0] == "init":
        return init_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    phantom = args.dataset in ("phantom2d", "phantom3d")
    # Options that do nothing for this dataset are refused, not ignored.
    if phantom:
        given = [flag for flag, value in (("--units", args.units), ("--spacing", args.spacing))
                 if value]
        if given:
            parser.error(f"{', '.join(given)}: a phantom's units and spacing are its own")
        if args.ndim is not None and args.ndim != (2 if args.dataset == "phantom2d" else 3):
            parser.error(f"--ndim {args.ndim}: {args.dataset} is "
                         f"{2 if args.dataset == 'phantom2d' else 3}D")
    else:
        given = [flag for flag, value in (
            ("--num-images", args.num_images is not None),
            ("--seed", args.seed != parser.get_default("seed")),
            ("--overwrite", args.overwrite)) if value]
        if given:
            parser.error(f"{', '.join(given)} generate a phantom (phantom2d, phantom3d), not "
                         f"{args.dataset}")
    if args.num_images is not None and args.num_images < 1:
        parser.error(f"--num-images must be >= 1. Received: {args.num_images}")
    start = time.perf_counter()
    try:
        if phantom:
            root = args.root or os.path.join(cache_dir(), args.dataset)
            options = {"num_images": args.num_images} if args.num_images is not None else {}
            print(f"generating {args.dataset} in {root} ...", flush=True)
            dataset = make_phantom(
                root,
                ndim=2 if args.dataset == "phantom2d" else 3,
                seed=args.seed,
                overwrite=args.overwrite,
                **options,
            )
        else:
            dataset = load_dataset(args.dataset, root=args.root, units=args.units,
                                   spacing=args.spacing, ndim=args.ndim)
        header = dataset.read_image_header(dataset.records[0])
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_status(error)
    seconds = time.perf_counter() - start
    points = dataset.points_mm
    print(
        f"{dataset.name}: {len(dataset)} {dataset.ndim}D images, {dataset.num_landmarks} landmarks "
        f"({np.isnan(points[..., 0]).sum()} missing), ready in {seconds:.1f} s"
    )
    print(f"first image: {dataset.records[0].image_path}")
    print(f"  size (x, y[, z]) {header.size}, spacing {np.round(header.spacing, 4).tolist()} mm")
    print(f"landmarks: {', '.join(dataset.landmark_names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
