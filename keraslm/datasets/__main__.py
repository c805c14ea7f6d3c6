"""`keraslm-dataset` (also `python -m keraslm.datasets`): generate a built-in phantom dataset,
or load any dataset and summarise it.

    keraslm-dataset                                 # the default 2D phantom, into the cache
    keraslm-dataset my_xrays/ --units index --spacing 0.1
    python -m keraslm.datasets phantom3d --root /tmp/p3 --num-images 20
    python -m keraslm.datasets isbi2015 --root ../shared/data/isbi2015-train
"""
import argparse
import os
import sys
import time

import numpy as np

from keraslm.cli import spacing
from keraslm.datasets import BUILTIN_DATASETS, cache_dir, load_dataset, make_phantom
from keraslm.errors import KeraslmError


def _parser():
    parser = argparse.ArgumentParser(
        prog="keraslm-dataset",
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
                        help="mm per pixel of plain images (PNG/JPEG): 0.1 or x,y")
    parser.add_argument(
        "--root",
        help=f"where to generate a phantom (default: {cache_dir()}/<dataset>), or the isbi2015 folder",
    )
    parser.add_argument("--num-images", type=int, help="phantom images to generate (default 100 in 2D, 40 in 3D)")
    parser.add_argument("--seed", type=int, default=0, help="phantom random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing phantom folder")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.dataset in ("phantom2d", "phantom3d"):
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
                                   spacing=args.spacing)
    except KeraslmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    header = dataset.read_image_header(dataset.records[0])
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
