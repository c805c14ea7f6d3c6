"""Training on a dataset that mixes storage orientations vs the same dataset stored one way. Not
a test.

The 3D phantom (every volume stored +x +y +z) is copied with each volume written as NIfTI in a
random one of the 48 axis orders and directions (the same physical image, affine adjusted;
landmarks unchanged, in mm). Both datasets train with the same settings and seed; the table
gives each run's validation error through the prediction graph (metrics.json) and the
orientations `keraslm-dataset check` found. Training brings every image into the canonical
frame, so the two should agree within noise.

    python benchmarks/bench_mixed_orientations.py --steps 150 --grid-spacing 6
"""
import argparse
import itertools
import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keraslm.datasets import load_dataset  # noqa: E402
from keraslm.datasets.check import check_dataset  # noqa: E402
from keraslm.io import Image, write_nifti  # noqa: E402
from keraslm.io.image import canonical_to_index_matrix  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.training import TrainingConfig, train  # noqa: E402


def stored_otherwise(image, permutation, flips):
    """The same physical image with index axis i of the copy = the image's axis permutation[i],
    reversed where flips[i]."""
    ndim = image.ndim
    array = np.transpose(image.array, [ndim - 1 - permutation[ndim - 1 - j] for j in range(ndim)])
    array = np.flip(array, axis=[ndim - 1 - i for i in range(ndim) if flips[i]])
    copy_to_image = canonical_to_index_matrix(permutation, flips, image.size)
    spacing = image.spacing[list(permutation)]
    direction = image.index_to_physical_matrix @ copy_to_image[:ndim, :ndim] / spacing[np.newaxis, :]
    return Image(np.ascontiguousarray(array), spacing=spacing,
                 origin=image.index_to_physical(copy_to_image[:ndim, ndim]), direction=direction)


def mixed_copy(dataset, folder, seed=0):
    """`dataset` (a keraslm.datasets folder dataset) with every image stored in a random
    orientation, as NIfTI, in `folder`."""
    rng = np.random.default_rng(seed)
    choices = [(p, f) for p in itertools.permutations(range(3))
               for f in itertools.product((False, True), repeat=3)]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "images"))
    rows = []
    for record in dataset.records:
        permutation, flips = choices[rng.integers(len(choices))]
        name = f"images/{record.id}.nii.gz"
        write_nifti(os.path.join(folder, name),
                    stored_otherwise(dataset.read_image(record), permutation, flips))
        rows.append([name] + [f"{v:.9g}" for v in np.asarray(record.points_mm).ravel()])
    header = ["image"] + [f"{n}_{a}" for n in dataset.landmark_names for a in "xyz"]
    with open(os.path.join(folder, "landmarks.csv"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(",".join(row) for row in [header] + rows) + "\n")
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump({"name": "phantom3d_mixed", "ndim": 3, "landmarks_csv": "landmarks.csv",
                   "landmark_units": "mm", "landmark_names": list(dataset.landmark_names)},
                  handle, indent=2)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--grid-spacing", type=float, help="grid mm (default: the plan's)")
    parser.add_argument("--output-dir", default="/tmp/bench_orientations")
    args = parser.parse_args()
    print(describe_machine(), flush=True)
    original = load_dataset("phantom3d")
    mixed_root = mixed_copy(original, os.path.join(args.output_dir, "phantom3d_mixed"))
    rows = []
    for name, dataset in (("stored one way (+x +y +z)", "phantom3d"),
                          ("mixed orientations", mixed_root)):
        check = check_dataset(load_dataset(dataset))
        orientations = "; ".join(f"{' '.join(o['orientation'])}: {o['images']}"
                                 for o in check.summary["orientations"])
        run_dir = os.path.join(args.output_dir, "run_" + ("mixed" if "mixed" in name else "one"))
        shutil.rmtree(run_dir, ignore_errors=True)
        result = train(TrainingConfig(dataset=dataset, steps=args.steps, steps_per_epoch=50,
                                      grid_spacing=args.grid_spacing, output_dir=run_dir, seed=0,
                                      plots=False),
                       log=lambda message: print(message, flush=True))
        summary = result.summary
        about_orientation = [f for f in check.findings if "orientation" in f.kind]
        rows.append((name, len(check.summary["orientations"]),
                     f"{len(check.warnings)} ({len(about_orientation)} about orientation)",
                     summary["mean_mm"], summary["median_mm"], orientations))
        print(rows[-1], flush=True)
    grid = f"{args.grid_spacing:g} mm grid" if args.grid_spacing else "the plan's grid"
    lines = [describe_machine(), f"3D phantom, {grid}, default training preset, {args.steps} "
             "steps, seed 0; validation error through the prediction graph (metrics.json)",
             "python benchmarks/bench_mixed_orientations.py --steps "
             f"{args.steps}" + (f" --grid-spacing {args.grid_spacing:g}" if args.grid_spacing else ""),
             "",
             "| dataset | orientations | keraslm-dataset check warnings | mean mm | median mm |",
             "|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} |" for r in rows]
    lines += ["", "orientations of the mixed copy: " + rows[-1][5]]
    print("\n".join(lines))
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/bench_mixed_orientations.txt", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
