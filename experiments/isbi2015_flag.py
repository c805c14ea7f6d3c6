"""ISBI 2015: the far-off flag (issue 31). A fold's coarse-to-fine model predicts its held-out
images; each landmark's expected error is the calibrated heatmap's (`fit_calibration`, fitted on
the other half of the held-out images: cross-fitted) or - with the shape vote - the larger of
that and the point's distance from the other landmarks' vote beyond `margin` times its normal
variation (`fit_shape_vote`, fitted on the fold's training labels only). Two more signals are
tried on top of the shipped one (heatmap and vote at margin 2): the distance between the global
stage's point and the refined point, and - given a second coarse-to-fine pair of the same fold
(`--second-pair`) - the two pairs' disagreement, with the model then their ensemble; with
`--test-time`, how far the points move when the image is predicted again rescaled and shifted
(test-time augmentation). The table
gives, for each setting, the share of landmarks flagged (expected error above 2.5 mm), how many
of the errors above 4 mm and above 10 mm the flag catches, and the Spearman correlation of
expected and actual errors. Errors above 10 mm are listed with the second doctor's distance from
the prediction: where the two doctors disagree by as much, the reference itself is in doubt.

    python experiments/isbi2015_flag.py --global experiments/results/isbi2015_v6/runs/scn_fold0 \\
        --refine experiments/results/isbi2015_v6/runs/local_unet_fold0 --fold 0 \\
        --output-dir experiments/results/isbi2015_flag/fold0

Several folds pool their held-out images, each fold's calibrated on the other folds' (run
folders with `{fold}`): `--global R/scn_fold{fold} --refine R/local_unet_fold{fold} --fold 0,1`.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keraslm.calibration import (  # noqa: E402
    SECOND_PEAK_POWER,
    cross_fitted_expected_error,
    fit_shape_vote,
    shape_vote_residual_mm,
    spearman,
)
from keraslm.datasets import isbi2015  # noqa: E402
from keraslm.experiments.isbi2015 import add_fold_model_arguments, fold_model  # noqa: E402
from keraslm.experiments.runs import write_experiment  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import combine_detectors, load_detector, predict  # noqa: E402
from keraslm.prediction.api import FLAG_MM  # noqa: E402

MARGINS = (1.0, 1.5, 2.0, 2.5, 3.0)
#: Offsets (mm) tried for the extra signals: expected error = max(shipped, signal - offset).
SIGNAL_OFFSETS = (0.5, 1.0, 2.0)
#: `--test-time`: the copies each held-out image is predicted on besides itself - spacings
#: scaled (the patient seen smaller: a larger one would leave the model's field of view) and the
#: pixels shifted cyclically (x, y) by pixel counts off the global grid's step.
TEST_TIME_SCALES = (0.93, 0.97)
TEST_TIME_SHIFTS = ((37, 29), (-41, -23))


def junior_points_mm(root, held_out):
    """The second doctor's landmarks of the held-out images (physical mm), or None."""
    if not os.path.isfile(os.path.join(root, "landmarks_junior.csv")):
        return None
    junior = isbi2015(root, landmarks_file="landmarks_junior.csv")
    return np.stack([junior.record(i).points_mm for i in held_out.ids])


def load_runs(runs):
    """The combined detector of run folders (global ones first)."""
    return combine_detectors([load_detector(os.path.join(r, "model.keras")) for r in runs])


def answers_of(detector, images):
    """(points mm, confidence, spread mm, global second peak) of `detector` on `images`, stacked
    over images."""
    answers = predict(detector, images)
    return tuple(np.stack([getattr(a, key) for a in answers])
                 for key in ("points_mm", "confidence", "spread_mm", "second_peak"))


def cross_fitted_heatmap(confidence, spread, errors, names, groups, second_peak=None,
                         power=SECOND_PEAK_POWER):
    """The heatmap's expected error, each group's images calibrated on the other groups' (with
    `second_peak`: the confidence damped by it to the `power`, as the shipped calibration can)."""
    damping = {} if second_peak is None else {"second_peak": second_peak,
                                              "second_peak_power": power}
    return cross_fitted_expected_error(confidence, spread, errors, names, groups=groups, **damping)


def augmented_spread(detector, images, points_mm):
    """How far the points move when the image is predicted again rescaled or shifted
    (`TEST_TIME_SCALES`, `TEST_TIME_SHIFTS`): per image and landmark the root mean square
    distance (mm) of the copies' points, mapped back to the image, from their mean (with
    `points_mm`, the image's own). Returns (spread `(num_images, num_landmarks)`, the copies'
    mean points `(num_images, num_landmarks, ndim)`)."""
    import dataclasses

    copies = [points_mm]
    for scale in TEST_TIME_SCALES:
        scaled = [dataclasses.replace(image, spacing=np.asarray(image.spacing) * scale)
                  for image in images]
        copies.append(np.stack([image.index_to_physical(answer.points_index) for image, answer
                                in zip(images, predict(detector, scaled))]))
    for shift in TEST_TIME_SHIFTS:
        shifted = [dataclasses.replace(image, array=np.roll(image.array, shift[::-1], axis=(0, 1)))
                   for image in images]
        copies.append(np.stack([image.index_to_physical(answer.points_index - np.asarray(shift))
                                for image, answer in zip(images, predict(detector, shifted))]))
    copies = np.stack(copies)
    mean = copies.mean(axis=0)
    return np.sqrt(np.mean(np.sum((copies - mean) ** 2, axis=-1), axis=0)), mean


def cross_fitted_increasing(signal, errors, groups):
    """The error to expect from one signal alone (the second peak, the test-time spread): an
    increasing function of it (isotonic, pooled over landmarks, linear between the blocks), each
    group's images fitted on the other groups'."""
    from keraslm.calibration import _held_out_groups, _interp, _isotonic_decreasing

    expected = np.zeros_like(errors)
    for test in _held_out_groups(len(errors), None, "the signal", groups):
        knots, values = _isotonic_decreasing(-signal[~test].ravel(), errors[~test].ravel())
        expected[test] = _interp(knots, values, -signal[test])
    return expected


def flag_rows(expected_by_label, errors):
    """Table rows: per expected-error setting, flagged share, catches and Spearman."""
    large, far = errors > 4.0, errors > 10.0
    rows = []
    for label, expected in expected_by_label:
        flagged = expected > FLAG_MM
        rows.append(f"| {label} | {100 * flagged.mean():.1f} | {flagged[large].sum()} of "
                    f"{large.sum()} ({100 * flagged[large].mean():.0f} %) | {flagged[far].sum()} "
                    f"of {far.sum()} | {spearman(expected, errors):.3f} |")
    return rows


HEADER = ["| expected error | flagged % | errors > 4 mm caught | errors > 10 mm caught "
          "| Spearman |", "|---|---|---|---|---|"]


def fold_arrays(args, fold):
    """One fold's held-out predictions and signals (arrays over its images), its run folders,
    the dataset and its number of training images."""
    runs, detector, dataset, training, held_out = fold_model(args, fold)
    images = [held_out.read_image(r) for r in held_out.records]
    global_runs = args.global_runs.format(fold=fold).split(",")
    names = list(dataset.landmark_names)
    points, confidence, spread, second_peak = answers_of(detector, images)
    vote = fit_shape_vote(np.stack([r.points_mm for r in training.records]), names)
    arrays = {"points": points, "confidence": confidence, "spread": spread,
              "global_points": answers_of(load_runs(global_runs), images)[0],
              "second_peak": second_peak,
              "truth": np.stack([r.points_mm for r in held_out.records]),
              "residual": np.asarray(shape_vote_residual_mm(vote, points)),
              "scale": np.broadcast_to(np.asarray(vote["scale_mm"]), points.shape[:2]),
              "fold": np.full(len(images), fold)}
    if args.test_time:
        if dataset.ndim != 2:
            raise SystemExit("--test-time shifts 2D images only")
        arrays["test_time_spread"], arrays["test_time_points"] = augmented_spread(
            detector, images, points)
    junior = junior_points_mm(args.dataset_root, held_out)
    if junior is not None:
        arrays["junior"] = junior
    if args.second_pair:
        first_pair = global_runs[:1] + args.refine.format(fold=fold).split(",")[:1]
        second = args.second_pair.format(fold=fold).split(",")
        ensemble = load_runs(first_pair[:1] + second[:1] + first_pair[1:] + second[1:])
        e_points, e_confidence, e_spread, e_second_peak = answers_of(ensemble, images)
        arrays.update({
            "first_pair_points": answers_of(load_runs(first_pair), images)[0],
            "second_pair_points": answers_of(load_runs(second), images)[0],
            "ensemble_points": e_points, "ensemble_confidence": e_confidence,
            "ensemble_spread": e_spread,
            "ensemble_second_peak": e_second_peak,
            "ensemble_residual": np.asarray(shape_vote_residual_mm(vote, e_points))})
    return arrays, runs, dataset, len(training.records), [r.id for r in held_out.records], vote


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fold_model_arguments(parser, several_folds=True)
    parser.add_argument("--second-pair", metavar="GLOBAL_RUN,LOCAL_RUN",
                        help="a second coarse-to-fine pair of the same fold(s) (e.g. the "
                             "flip-trained runs; {fold} for the fold's number): adds a table for "
                             "the two pairs' ensemble, with their disagreement as a further "
                             "signal")
    parser.add_argument("--test-time", action="store_true",
                        help="also predict each image rescaled and shifted (TEST_TIME_SCALES, "
                             "TEST_TIME_SHIFTS) and try how far its points move as a signal")
    args = parser.parse_args(argv)
    if not args.refine:
        parser.error("--refine is needed: the flag is measured on a coarse-to-fine model")
    if len(args.fold) > 1 and "{fold}" not in args.global_runs:
        parser.error("several folds need {fold} in the run folders (e.g. --global "
                     "runs/scn_fold{fold})")
    print(describe_machine(), flush=True)
    parts, runs, ids, training_sizes = [], [], [], []
    for fold in args.fold:
        arrays, fold_runs, dataset, num_training, fold_ids, vote = fold_arrays(args, fold)
        parts.append(arrays)
        runs += fold_runs
        ids += [f"{fold}:{i}" for i in fold_ids]
        training_sizes.append(num_training)
    pooled = {key: np.concatenate([part[key] for part in parts])
              for key in parts[0] if all(key in part for part in parts)}
    names = list(dataset.landmark_names)
    margin = vote["margin"]
    points, confidence, spread = pooled["points"], pooled["confidence"], pooled["spread"]
    truth, residual, scale = pooled["truth"], pooled["residual"], pooled["scale"]
    second_peak = pooled["second_peak"]
    # Cross-fitting: each fold's images calibrated on the other folds'; one fold: two halves.
    groups = pooled["fold"] if len(args.fold) > 1 else np.arange(len(points)) % 2
    errors = np.linalg.norm(points - truth, axis=-1)
    heatmap = cross_fitted_heatmap(confidence, spread, errors, names, groups)
    large, far = errors > 4.0, errors > 10.0
    shipped = np.maximum(heatmap, residual - margin * scale)
    stage_gap = np.linalg.norm(points - pooled["global_points"], axis=-1)
    settings = [("heatmap (calibrated peak and spread)", heatmap)]
    settings += [(f"max(heatmap, vote residual - {m:g} x variation)",
                  np.maximum(heatmap, residual - m * scale)) for m in MARGINS]
    settings += [(f"max(shipped, stage gap - {o:g} mm)", np.maximum(shipped, stage_gap - o))
                 for o in SIGNAL_OFFSETS]
    settings.append(("max(shipped, second peak's error)",
                     np.maximum(shipped, cross_fitted_increasing(second_peak, errors, groups))))
    for power in (1, 2):
        settings.append((f"max(heatmap calibrated on confidence x (1 - second peak)^{power}, "
                         f"vote residual - {margin:g} x variation)",
                         np.maximum(cross_fitted_heatmap(confidence, spread, errors, names, groups,
                                                         second_peak, power),
                                    residual - margin * scale)))
    if args.test_time:
        moved = pooled["test_time_spread"]
        settings.append(("max(shipped, test-time spread's error)",
                         np.maximum(shipped, cross_fitted_increasing(moved, errors, groups))))
        settings += [(f"max(shipped, {k:g} x test-time spread - {o:g} mm)",
                      np.maximum(shipped, k * moved - o)) for k, o in ((1, 0.5), (2, 1), (3, 2))]

    folds_text = ", ".join(map(str, args.fold))
    fitted = (": each fold's images on the other folds'" if len(args.fold) > 1 else
              " over two halves of the held-out images")
    lines = [f"# ISBI 2015 fold{'s' if len(args.fold) > 1 else ''} {folds_text}: flagging "
             "far-off points", "",
             f"Models: {', '.join(runs)}. {len(points)} held-out images of fold"
             f"{'s' if len(args.fold) > 1 else ''} {folds_text} (of {args.num_folds}), "
             f"{errors.size} landmarks; MRE {errors.mean():.2f} mm. Heatmap calibration "
             f"cross-fitted{fitted}; shape vote fitted on each fold's "
             f"{'/'.join(map(str, sorted(set(training_sizes))))} training shapes (ridge "
             f"{vote['ridge']:g}; normal variation per landmark {scale.min():.1f} to "
             f"{scale.max():.1f} mm). Flag: expected error above {FLAG_MM:g} mm. 'shipped' = "
             f"max(heatmap, vote residual - {margin:g} x variation), as the shipped model "
             "computes it; 'stage gap' = distance between the global stage's point and the "
             "refined one; 'second peak' = the global stage's highest heatmap value farther "
             "than two target sigmas (5 mm on the 192x160 grid, 4 mm on the 240x208 grid of a "
             "second ensemble member) from its peak, over the peak (the prediction's "
             "`second_peak`), as an error by an isotonic fit (cross-fitted like the heatmap's) "
             "or folded into the confidence the heatmap calibration reads "
             "(`second_peak_power`)."
             + ("" if not args.test_time else
                " 'test-time spread' = root mean square distance of the points from their mean "
                "when each image is predicted also with its spacing scaled by "
                f"{', '.join(f'{v:g}' for v in TEST_TIME_SCALES)} and its pixels shifted by "
                f"{', '.join(f'({x}, {y})' for x, y in TEST_TIME_SHIFTS)} (x, y); the mean of "
                "those 5 predictions has an MRE of "
                f"{np.linalg.norm(pooled['test_time_points'] - truth, axis=-1).mean():.2f} mm "
                f"(median spread {np.median(pooled['test_time_spread']):.2f} mm, "
                f"{np.median(pooled['test_time_spread'][errors > 4]):.2f} mm at errors > 4 mm).")
             + f" {describe_machine()}.", ""] + HEADER + flag_rows(settings, errors)
    payload = {"ids": ids, "errors_mm": errors.tolist(), "heatmap_expected_mm": heatmap.tolist(),
               "vote_residual_mm": residual.tolist(), "vote_scale_mm": scale.tolist(),
               "stage_gap_mm": stage_gap.tolist(), "second_peak": second_peak.tolist()}
    if args.test_time:
        payload["test_time_spread_mm"] = pooled["test_time_spread"].tolist()
    if args.second_pair:
        e_points = pooled["ensemble_points"]
        e_errors = np.linalg.norm(e_points - truth, axis=-1)
        e_heatmap = cross_fitted_heatmap(pooled["ensemble_confidence"],
                                         pooled["ensemble_spread"], e_errors, names, groups)
        e_vote = pooled["ensemble_residual"] - margin * scale
        e_shipped = np.maximum(e_heatmap, e_vote)
        disagreement = np.linalg.norm(pooled["first_pair_points"] - pooled["second_pair_points"],
                                      axis=-1)
        e_settings = [("heatmap (calibrated peak and spread)", e_heatmap), ("shipped", e_shipped)]
        e_settings += [(f"max(shipped, pairs' disagreement - {o:g} mm)",
                        np.maximum(e_shipped, disagreement - o)) for o in SIGNAL_OFFSETS]
        e_settings.append((
            "max(heatmap calibrated on confidence x (1 - second peak)^2, vote residual - "
            f"{margin:g} x variation)",
            np.maximum(cross_fitted_heatmap(pooled["ensemble_confidence"],
                                            pooled["ensemble_spread"], e_errors, names, groups,
                                            pooled["ensemble_second_peak"], 2), e_vote)))
        first = np.linalg.norm(pooled["first_pair_points"] - truth, axis=-1)
        second = np.linalg.norm(pooled["second_pair_points"] - truth, axis=-1)
        pairs = [args.global_runs.split(",")[0] + " + " + args.refine.split(",")[0],
                 " + ".join(args.second_pair.split(","))]
        lines += ["", f"The ensemble of both pairs ({pairs[0]} and {pairs[1]}; each pair's local "
                  f"stage refines the ensemble's global estimate): MRE {e_errors.mean():.2f} +- "
                  f"{e_errors.std():.2f} mm, {(e_errors > 4).sum()} errors > 4 mm, "
                  f"{(e_errors > 10).sum()} > 10 mm (the first pair alone: {first.mean():.2f} "
                  f"mm; the second alone: {second.mean():.2f} mm). 'pairs' disagreement' = "
                  "distance between the two pairs' points, each pair predicting on its own.",
                  ""] + HEADER + flag_rows(e_settings, e_errors)
        payload.update({"ensemble_errors_mm": e_errors.tolist(),
                        "pairs_disagreement_mm": disagreement.tolist()})
    junior = pooled.get("junior")
    lines += ["", "Errors above 10 mm of the first pair (expected error 'shipped'):",
              "", "| image | landmark | error mm | heatmap expected mm | vote residual mm | "
              "expected mm | stage gap mm | second doctor from the prediction mm | doctors "
              "apart mm |", "|---|---|---|---|---|---|---|---|---|"]
    for i, k in zip(*np.nonzero(far)):
        image = ids[i] if len(args.fold) > 1 else ids[i].split(":", 1)[1]
        doctors = ("- | -" if junior is None else
                   f"{np.linalg.norm(points[i, k] - junior[i, k]):.1f} | "
                   f"{np.linalg.norm(truth[i, k] - junior[i, k]):.1f}")
        lines.append(f"| {image} | {names[k]} | {errors[i, k]:.1f} | "
                     f"{heatmap[i, k]:.1f} | {residual[i, k]:.1f} | {shipped[i, k]:.1f} | "
                     f"{stage_gap[i, k]:.1f} | {doctors} |")
    if junior is not None:
        apart = np.linalg.norm(truth - junior, axis=-1)
        shipped_flag = shipped > FLAG_MM
        clear4, clear10 = large & (apart <= 4), far & (apart <= 4)
        lines += ["", f"Of the {large.sum()} errors above 4 mm, {(large & (apart > 4)).sum()} are "
                  "at points where the two doctors are more than 4 mm apart, and "
                  f"{(large & (np.linalg.norm(points - junior, axis=-1) < 2)).sum()} lie within "
                  "2 mm of the second doctor's point. Where the doctors are within 4 mm of "
                  f"each other, the flag ('shipped') catches {shipped_flag[clear4].sum()} of "
                  f"{clear4.sum()} errors above 4 mm and {shipped_flag[clear10].sum()} of "
                  f"{clear10.sum()} above 10 mm."]
    print(write_experiment(args.output_dir, lines, payload, "experiments/isbi2015_flag.py",
                           argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
