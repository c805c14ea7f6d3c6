"""ISBI 2015: the model against each doctor (issue 31, the second annotator). A fold's
coarse-to-fine model(s) predict the held-out images; the table gives the mean radial error
against the senior doctor's landmarks (the challenge's ground truth), the junior doctor's and
their mean, per configuration and per landmark, beside how far the two doctors are apart on the
same images. Several configurations (`--config NAME GLOBAL_RUNS LOCAL_RUNS`, e.g. trained on the
senior labels and on the mean of both) are compared on the same images.

    python experiments/isbi2015_annotators.py --fold 0 \\
        --config senior experiments/results/isbi2015_v6/runs/scn_fold0 \\
                        experiments/results/isbi2015_v6/runs/local_unet_fold0 \\
        --output-dir experiments/results/isbi2015_annotators/fold0
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keraslm.data import select_split  # noqa: E402
from keraslm.datasets import isbi2015  # noqa: E402
from keraslm.experiments.runs import write_experiment  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import combine_detectors, load_detector, predict  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs=3, action="append", required=True,
                        metavar=("NAME", "GLOBAL_RUNS", "LOCAL_RUNS"),
                        help="a configuration: its name, its global and its local run folders "
                        "(comma-separated for an ensemble; '-' for no local stage)")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--num-folds", type=int, default=5)
    parser.add_argument("--dataset-root", default="../shared/data/isbi2015-train")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    senior = isbi2015(args.dataset_root)
    junior = isbi2015(args.dataset_root, landmarks_file="landmarks_junior.csv")
    _, held_out = select_split(senior, fold=args.fold, num_folds=args.num_folds, seed=0)
    ids = held_out.ids
    references = {"senior": np.stack([senior.record(i).points_mm for i in ids]),
                  "junior": np.stack([junior.record(i).points_mm for i in ids])}
    references["mean of both"] = (references["senior"] + references["junior"]) / 2
    apart = np.linalg.norm(references["senior"] - references["junior"], axis=-1)
    names = list(senior.landmark_names)
    print(describe_machine(), flush=True)
    images = [held_out.read_image(r) for r in held_out.records]
    errors = {}
    for name, global_runs, local_runs in args.config:
        runs = global_runs.split(",") + ([] if local_runs == "-" else local_runs.split(","))
        detector = combine_detectors([load_detector(os.path.join(r, "model.keras")) for r in runs])
        points = np.stack([a.points_mm for a in predict(detector, images)])
        errors[name] = {label: np.linalg.norm(points - truth, axis=-1)
                        for label, truth in references.items()}
        print(f"{name}: " + ", ".join(f"vs {label} {e.mean():.2f} mm"
                                      for label, e in errors[name].items()), flush=True)
    lines = [f"# ISBI 2015 fold {args.fold}: the model against each doctor", "",
             f"{len(ids)} held-out images of fold {args.fold} (of {args.num_folds}), "
             f"{apart.size} landmarks. The two doctors are {apart.mean():.2f} +- {apart.std():.2f} "
             f"mm apart on them (median {np.median(apart):.2f}). {describe_machine()}.", "",
             "| configuration | vs senior (ground truth) mm | vs junior mm | vs mean of both mm | "
             "SDR 2 mm vs senior % | > 10 mm vs senior |", "|---|---|---|---|---|---|"]
    for name, by_reference in errors.items():
        e = by_reference["senior"]
        lines.append(f"| {name} | {e.mean():.2f} +- {e.std():.2f} | "
                     f"{by_reference['junior'].mean():.2f} | {by_reference['mean of both'].mean():.2f} | "
                     f"{100 * np.mean(e <= 2):.1f} | {int(np.sum(e > 10))} |")
    header = " | ".join(f"{name} vs senior | vs junior" for name in errors)
    lines += ["", "Per landmark, mean radial error (mm):", "",
              f"| landmark | doctors apart | {header} |",
              "|---|---|" + "---|---|" * len(errors)]
    for k, landmark in enumerate(names):
        cells = " | ".join(f"{by_reference['senior'][:, k].mean():.2f} | "
                           f"{by_reference['junior'][:, k].mean():.2f}"
                           for by_reference in errors.values())
        lines.append(f"| {landmark} | {apart[:, k].mean():.2f} | {cells} |")
    print(write_experiment(
        args.output_dir, lines,
        {"ids": list(ids), "doctors_apart_mm": apart.tolist(),
         "errors_mm": {name: {label: e.tolist() for label, e in by_reference.items()}
                       for name, by_reference in errors.items()}},
        "experiments/isbi2015_annotators.py", argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
