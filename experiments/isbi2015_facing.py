"""ISBI 2015: cephalograms of patients facing the other way. Every held-out image of a fold is
predicted as it is and mirrored left-right (a patient facing left), by a fold's model without
and with the mirror check (`keraslm.spec.MirrorCheck`); the table gives the mean radial error
of each, the mean landmark confidences that tell the facings apart, and the time per image.

The mirror check decides on the global stage's mean confidence; its threshold is fitted
(`keraslm.calibration.fit_mirror_threshold`) on the OTHER half of the held-out images (two
halves, each fitted on the other), so no image decides its own threshold.

    python experiments/isbi2015_facing.py --global experiments/results/isbi2015_v6/runs/scn_fold0 \\
        --fold 0 --output-dir experiments/results/isbi2015_facing/fold0_global
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keraslm.calibration import fit_mirror_threshold  # noqa: E402
from keraslm.experiments.runs import write_experiment  # noqa: E402
from keraslm.experiments.isbi2015 import (  # noqa: E402
    add_fold_model_arguments,
    fold_model,
    mirrored_left_right,
)
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import (  # noqa: E402
    LandmarkDetector,
    combine_detectors,
    load_detector,
    load_predictor,
    predict,
)
from keraslm.spec import MirrorCheck  # noqa: E402


def mirrored_points_mm(image, points_mm):
    """Landmarks in mm of `mirrored_left_right(image)`."""
    index = image.physical_to_index(points_mm)
    index[:, 0] = image.size[0] - 1 - index[:, 0]
    return image.index_to_physical(index)


def timed_predictions(detector, images):
    """Predictions of `images` and the seconds per image, the graph compiled before."""
    predictor = load_predictor(detector)
    predict(predictor, images[:1])
    start = time.perf_counter()
    answers = predict(predictor, images)
    return answers, (time.perf_counter() - start) / len(images)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fold_model_arguments(parser)
    parser.add_argument("--images", type=int, help="only the first N held-out images")
    args = parser.parse_args(argv)
    runs, detector, _, _, held_out = fold_model(args)
    records = held_out.records[:args.images]
    images = [held_out.read_image(record) for record in records]
    mirrors = [mirrored_left_right(image) for image in images]
    truth = np.stack([r.points_mm for r in records])
    mirrored_truth = np.stack([mirrored_points_mm(i, r.points_mm) for i, r in zip(images, records)])
    print(describe_machine(), flush=True)

    def errors(answers, expected):
        return np.linalg.norm(np.stack([a.points_mm for a in answers]) - expected, axis=-1)

    plain_upright, plain_upright_s = timed_predictions(detector, images)
    plain_mirrored, plain_mirrored_s = timed_predictions(detector, mirrors)
    # The check decides on the global stage's confidence: of the global runs alone.
    global_detector = (combine_detectors([load_detector(os.path.join(r, "model.keras"))
                                          for r in args.global_runs.split(",")])
                       if args.refine else None)
    upright_confidence, mirrored_confidence = (
        np.array([a.confidence.mean() for a in answers]) for answers in (
            (plain_upright, plain_mirrored) if global_detector is None else
            (predict(global_detector, images), predict(global_detector, mirrors))))
    halves = [np.arange(len(images)) % 2 == h for h in (0, 1)]
    checked = {"upright": [None] * len(images), "mirrored": [None] * len(images)}
    seconds = {"upright": 0.0, "mirrored": 0.0}
    thresholds = []
    for half, other in (halves, halves[::-1]):
        check = MirrorCheck("x", fit_mirror_threshold(upright_confidence[other],
                                                      mirrored_confidence[other]))
        thresholds.append(check.confidence_below)
        with_check = LandmarkDetector(detector.spec.replace(mirror_check=check), detector.networks,
                                      detector.local_networks)
        positions = np.flatnonzero(half)
        for name, pool in (("upright", images), ("mirrored", mirrors)):
            answers, per_image = timed_predictions(with_check, [pool[p] for p in positions])
            seconds[name] += per_image * len(positions) / len(images)
            for p, answer in zip(positions, answers):
                checked[name][p] = answer
    rows = [
        ("as it is, no check", errors(plain_upright, truth), plain_upright_s),
        ("mirrored, no check", errors(plain_mirrored, mirrored_truth), plain_mirrored_s),
        ("as it is, mirror check", errors(checked["upright"], truth), seconds["upright"]),
        ("mirrored, mirror check", errors(checked["mirrored"], mirrored_truth), seconds["mirrored"]),
    ]
    lines = [
        f"# ISBI 2015 fold {args.fold}: held-out cephalograms as they are and mirrored", "",
        f"Models: {', '.join(runs)}. {len(images)} held-out images of fold {args.fold} "
        f"(of {args.num_folds}); mirror check threshold fitted on the other half of them "
        f"({', '.join(f'{t:.2f}' for t in thresholds)}). {describe_machine()}.", "",
        "| images | MRE mm | SD mm | median mm | SDR 2 mm % | points > 10 mm | s per image |",
        "|---|---|---|---|---|---|---|"]
    for name, e, s in rows:
        lines.append(f"| {name} | {e.mean():.2f} | {e.std():.2f} | {np.median(e):.2f} | "
                     f"{100 * np.mean(e <= 2.0):.1f} | {int(np.sum(e > 10))} | {s:.2f} |")
    lines += ["", f"Mean landmark confidence of the global stage: as it is {upright_confidence.min():.1f} to "
              f"{upright_confidence.max():.1f} (median {np.median(upright_confidence):.1f}); "
              f"mirrored {mirrored_confidence.min():.1f} to {mirrored_confidence.max():.1f} "
              f"(median {np.median(mirrored_confidence):.1f})."]
    print(write_experiment(
        args.output_dir, lines,
        {"ids": [r.id for r in records], "thresholds": thresholds,
         "upright_confidence": upright_confidence.tolist(),
         "mirrored_confidence": mirrored_confidence.tolist(),
         "rows": [{"images": n, "errors_mm": e.tolist(), "seconds_per_image": s}
                  for n, e, s in rows]},
        "experiments/isbi2015_facing.py", argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
