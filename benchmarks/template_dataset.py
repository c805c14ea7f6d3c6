"""A 3D dataset from a real brain image that a wheel ships: nibabel's `tests/data/anatomical.nii`
(an MR crop of 33 x 41 x 25 voxels at 2 mm around the lateral ventricles), with 9 landmarks
defined here and random affine + elastic deformations of image and landmarks together
(keraslm.ops.augmentation). Not a test; used by `bench_3d_grids.py --dataset FOLDER`.

    python benchmarks/template_dataset.py /tmp/template3d --copies 40

The landmarks (template index x, y, z; chosen on the axial slice z = 12, the sagittal x = 16 and
the coronal y = 30): the tips of the left and right frontal horns, the centre of the ventricles
between them, a dark spot posterior in the midline, the top and the bottom of the ring of the
corpus callosum in the midsagittal slice, a bright spot at the base in the coronal slice, and
the left and right edge of the brain at the level of the horns.
"""
import argparse
import json
import os
import shutil
import sys

import nibabel
import numpy as np

LANDMARKS = {  # name: template index (x, y, z)
    "left_frontal_horn": (8, 33, 12), "right_frontal_horn": (24, 33, 12),
    "ventricle_centre": (16, 25, 12), "posterior_midline": (16, 6, 12),
    "callosal_ring_top": (16, 10, 19), "callosal_ring_bottom": (16, 10, 6),
    "basal_bright_spot": (16, 30, 2), "left_edge": (3, 20, 12), "right_edge": (29, 20, 12),
}
PAD = 8  # voxels of padding around the template, so that deformations stay in the field
SPACING_MM = 2.0


def template():
    """The template volume as an array [z, y, x] (float32)."""
    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    volume = np.asarray(nibabel.load(path).dataobj, np.float32)  # [x, y, z]
    return np.transpose(volume, (2, 1, 0))


def make_template_dataset(folder, copies=40, seed=0):
    """Writes `copies` deformed copies of the template as NIfTI with their landmarks (mm) in
    `folder` (a keraslm dataset folder: images/, landmarks.csv, dataset.json)."""
    from keraslm.io import Image, write_nifti
    from keraslm.ops import AugmentationConfig, apply_to_images, apply_to_points, sample_transforms

    volume = template()
    padded = np.pad(volume, PAD, mode="constant", constant_values=float(np.percentile(volume, 5)))
    points = np.array(list(LANDMARKS.values()), np.float32) + PAD
    config = AugmentationConfig(rotation_degrees=10.0, translation_mm=6.0, scale=0.08,
                                axis_scale=0.05, elastic_mm=4.0, elastic_grid_points=5,
                                intensity_scale=0.0, intensity_shift=0.0)
    transforms = sample_transforms(seed, copies, padded.shape, SPACING_MM, config)
    images = apply_to_images(np.broadcast_to(padded[np.newaxis, ..., np.newaxis],
                                             (copies, *padded.shape, 1)).astype(np.float32),
                             transforms, fill_value=float(padded.min()), intensity=False)
    moved, valid = apply_to_points(np.broadcast_to(points, (copies, *points.shape)), transforms)
    images, moved, valid = (np.asarray(images), np.asarray(moved), np.asarray(valid))
    if not valid.all():
        raise RuntimeError("a landmark left the field: raise PAD")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "images"))
    rows = []
    for number in range(copies):
        name = f"images/template_{number:03d}.nii.gz"
        write_nifti(os.path.join(folder, name),
                    Image(images[number, ..., 0], spacing=(SPACING_MM,) * 3))
        rows.append([name] + [f"{v:.4f}" for v in (moved[number] * SPACING_MM).ravel()])
    header = ["image"] + [f"{n}_{a}" for n in LANDMARKS for a in "xyz"]
    with open(os.path.join(folder, "landmarks.csv"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(",".join(row) for row in [header] + rows) + "\n")
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump({"name": "template3d", "ndim": 3, "landmarks_csv": "landmarks.csv",
                   "landmark_units": "mm", "landmark_names": list(LANDMARKS)}, handle, indent=2)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_template_dataset(args.folder, args.copies, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
