"""ISBI 2015 with the mean of both doctors' landmarks (issue 31, the second annotator as a lever):
writes a dataset folder that `--dataset isbi2015 --dataset-root FOLDER` reads - `landmarks.csv`
holding, per image and landmark, the mean of the senior (`landmarks.csv`) and the junior doctor's
(`landmarks_junior.csv`) pixel positions, and `images` linked to the original folder's. The
images and their order are the original's, so `--fold K` holds out the same images; a model
trained on it is then compared against the senior labels (the challenge's ground truth).

    python experiments/isbi2015_mean_labels.py --dataset-root ../shared/data/isbi2015-train \\
        --output-dir /work/isbi2015_mean_labels
"""
import argparse
import csv
import os
import sys


def mean_rows(senior_path, junior_path):
    """The header and the rows of the mean table; raises SystemExit when the two files do not
    list the same images and columns in the same order."""
    with open(senior_path, newline="", encoding="utf-8") as handle:
        senior = list(csv.reader(handle))
    with open(junior_path, newline="", encoding="utf-8") as handle:
        junior = list(csv.reader(handle))
    if senior[0] != junior[0]:
        raise SystemExit(f"{junior_path}: columns differ from {senior_path}'s")
    if [row[0] for row in senior[1:]] != [row[0] for row in junior[1:]]:
        raise SystemExit(f"{junior_path}: images differ from {senior_path}'s (or their order)")
    rows = [[a[0]] + [f"{(float(x) + float(y)) / 2:g}" for x, y in zip(a[1:], b[1:])]
            for a, b in zip(senior[1:], junior[1:])]
    return senior[0], rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-root", default="../shared/data/isbi2015-train")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    header, rows = mean_rows(os.path.join(args.dataset_root, "landmarks.csv"),
                             os.path.join(args.dataset_root, "landmarks_junior.csv"))
    os.makedirs(args.output_dir, exist_ok=True)
    images = os.path.join(args.output_dir, "images")
    if not os.path.exists(images):
        os.symlink(os.path.abspath(os.path.join(args.dataset_root, "images")), images)
    temporary = os.path.join(args.output_dir, "landmarks.csv.partial")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header] + rows)
    os.replace(temporary, os.path.join(args.output_dir, "landmarks.csv"))
    print(f"{args.output_dir}: {len(rows)} images, the mean of both doctors' landmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
