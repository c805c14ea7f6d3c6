"""ISBI 2015: the far-off flag (issue 31). A fold's coarse-to-fine model predicts its held-out
images; each landmark's expected error is the calibrated heatmap's (`fit_calibration`, fitted on
the other half of the held-out images: cross-fitted) or - with the shape vote - the larger of
that and the point's distance from the other landmarks' vote beyond `margin` times its normal
variation (`fit_shape_vote`, fitted on the fold's training labels only). The table gives, for
each setting, the share of landmarks flagged (expected error above 2.5 mm), how many of the
errors above 4 mm and above 10 mm the flag catches, and the Spearman correlation of expected and
actual errors. Errors above 10 mm are listed with the second doctor's distance from the
prediction: where the two doctors disagree by as much, the reference itself is in doubt.

    python experiments/isbi2015_flag.py --global experiments/results/isbi2015_v6/runs/scn_fold0 \\
        --refine experiments/results/isbi2015_v6/runs/local_unet_fold0 --fold 0 \\
        --output-dir experiments/results/isbi2015_flag/fold0
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keraslm.calibration import (  # noqa: E402
    expected_error_mm,
    fit_calibration,
    fit_shape_vote,
    shape_vote_residual_mm,
    spearman,
)
from keraslm.datasets import isbi2015  # noqa: E402
from keraslm.experiments.isbi2015 import add_fold_model_arguments, fold_model  # noqa: E402
from keraslm.experiments.runs import write_experiment  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import predict  # noqa: E402
from keraslm.prediction.api import FLAG_MM  # noqa: E402

MARGINS = (1.0, 1.5, 2.0, 2.5, 3.0)


def junior_points_mm(root, held_out):
    """The second doctor's landmarks of the held-out images (physical mm), or None."""
    if not os.path.isfile(os.path.join(root, "landmarks_junior.csv")):
        return None
    junior = isbi2015(root, landmarks_file="landmarks_junior.csv")
    return np.stack([junior.record(i).points_mm for i in held_out.ids])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fold_model_arguments(parser)
    args = parser.parse_args(argv)
    runs, detector, dataset, training, held_out = fold_model(args)
    names = list(dataset.landmark_names)
    print(describe_machine(), flush=True)
    answers = predict(detector, [held_out.read_image(r) for r in held_out.records])
    points = np.stack([a.points_mm for a in answers])
    confidence = np.stack([a.confidence for a in answers])
    spread = np.stack([a.spread_mm for a in answers])
    truth = np.stack([r.points_mm for r in held_out.records])
    errors = np.linalg.norm(points - truth, axis=-1)
    # The heatmap's expected error, cross-fitted over two halves of the held-out images.
    heatmap = np.zeros_like(errors)
    halves = np.arange(len(answers)) % 2
    for half in (0, 1):
        calibration = fit_calibration(confidence[halves != half], spread[halves != half],
                                      errors[halves != half], names)
        heatmap[halves == half] = np.asarray(expected_error_mm(
            calibration, confidence[halves == half], spread[halves == half]))
    vote = fit_shape_vote(np.stack([r.points_mm for r in training.records]), names)
    residual = np.asarray(shape_vote_residual_mm(vote, points))
    scale = np.asarray(vote["scale_mm"])
    large, far = errors > 4.0, errors > 10.0

    def row(label, expected):
        flagged = expected > FLAG_MM
        return (f"| {label} | {100 * flagged.mean():.1f} | {flagged[large].sum()} of {large.sum()} "
                f"({100 * flagged[large].mean():.0f} %) | {flagged[far].sum()} of {far.sum()} | "
                f"{spearman(expected, errors):.3f} |")

    lines = [f"# ISBI 2015 fold {args.fold}: flagging far-off points", "",
             f"Models: {', '.join(runs)}. {len(answers)} held-out images of fold {args.fold} (of "
             f"{args.num_folds}), {errors.size} landmarks; MRE {errors.mean():.2f} mm. Heatmap "
             "calibration cross-fitted over two halves of the held-out images; shape vote fitted "
             f"on the fold's {len(training.records)} training shapes (ridge {vote['ridge']:g}; "
             f"normal variation per landmark {scale.min():.1f} to {scale.max():.1f} mm). "
             f"Flag: expected error above {FLAG_MM:g} mm. {describe_machine()}.", "",
             "| expected error | flagged % | errors > 4 mm caught | errors > 10 mm caught | Spearman |",
             "|---|---|---|---|---|",
             row("heatmap (calibrated peak and spread)", heatmap)]
    for margin in MARGINS:
        row_expected = np.maximum(heatmap, residual - margin * scale)
        lines.append(row(f"max(heatmap, vote residual - {margin:g} x variation)", row_expected))
    junior = junior_points_mm(args.dataset_root, held_out)
    shipped = np.maximum(heatmap, residual - vote["margin"] * scale)
    lines += ["", f"Errors above 10 mm (expected error with the vote at margin {vote['margin']:g}):",
              "", "| image | landmark | error mm | heatmap expected mm | vote residual mm | "
              "expected mm | second doctor from the prediction mm | doctors apart mm |",
              "|---|---|---|---|---|---|---|---|"]
    for i, k in zip(*np.nonzero(far)):
        second = ("" if junior is None else
                  f"{np.linalg.norm(points[i, k] - junior[i, k]):.1f} | "
                  f"{np.linalg.norm(truth[i, k] - junior[i, k]):.1f}")
        lines.append(f"| {held_out.records[i].id} | {names[k]} | {errors[i, k]:.1f} | "
                     f"{heatmap[i, k]:.1f} | {residual[i, k]:.1f} | {shipped[i, k]:.1f} | "
                     f"{second or '- | -'} |")
    if junior is not None:
        apart = np.linalg.norm(truth - junior, axis=-1)
        lines += ["", f"Of the {large.sum()} errors above 4 mm, {(large & (apart > 4)).sum()} are "
                  "at points where the two doctors are more than 4 mm apart, and "
                  f"{(large & (np.linalg.norm(points - junior, axis=-1) < 2)).sum()} lie within "
                  "2 mm of the second doctor's point."]
    print(write_experiment(
        args.output_dir, lines,
        {"ids": [r.id for r in held_out.records], "errors_mm": errors.tolist(),
         "heatmap_expected_mm": heatmap.tolist(), "vote_residual_mm": residual.tolist(),
         "vote_scale_mm": scale.tolist()},
        "experiments/isbi2015_flag.py", argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
