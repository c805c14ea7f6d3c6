"""ISBI 2015: the cross-validation runs' held-out predictions, recorded in the repository, and the
tables made from the records alone (issue 31).

Run folders live outside git and have twice been lost with their machine; a record is small and
is committed. `save` predicts a fold's held-out images with every configuration whose runs of
that fold have finished and writes `<configuration>_fold<K>.npz` (per image and landmark: the
global stage's point, the refined point, confidence, spread and global second peak, beside the
senior and the junior doctor's landmarks; an ensemble's also each member's global and refined
point) and `.json` (the runs, a SHA-256 of each model, their
training hours and precision, the CPU); a record whose runs were trained again is written anew.
`table` reads the records: per configuration the global, refined and blended rows (the blend's
per-landmark weights fitted on the other recorded folds, as the shipped calibration's
`local_weight`), per fold and per landmark, the runs' training hours, and - on the folds where
both are recorded - the pair trained on the mean of both doctors' labels against the pair
trained on the senior's, measured against the senior (the challenge's ground truth), the junior
and their mean.

    python experiments/isbi2015_records.py save [--runs-dir experiments/results/isbi2015_v6/runs]
    python experiments/isbi2015_records.py table [--output-dir experiments/results/isbi2015_records]
"""
import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS_DIR = os.path.join(REPO, "experiments", "results", "isbi2015_v6", "runs")
RECORDS_DIR = os.path.join(REPO, "experiments", "results", "isbi2015_records")
NUM_FOLDS = 5
#: The flag thresholds (mm of expected error) whose cross-fitted figures the tables give.
OPERATING_FLAG_MM = (1.5, 2.0, 2.5, 3.0, 4.0)
#: Each configuration: its global and its local runs' kinds (`isbi2015_queue.KINDS`; several
#: make an ensemble) and its table label.
CONFIGURATIONS = {
    "pair": (("scn",), ("local_unet",), "SCN + local U-Net (trained on the senior's labels)"),
    "ensemble": (("scn", "scn_member2"), ("local_unet", "local_unet_member2"),
                 "SCN x2 + local U-Net x2 (version 6's configuration)"),
    "meanlabels": (("scn_meanlabels",), ("local_unet_meanlabels",),
                   "SCN + local U-Net trained on the mean of both doctors' labels"),
    "flip": (("scn_flip",), ("local_unet_flip",), "SCN + local U-Net trained with random flips"),
}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_paths(records_dir, configuration, fold):
    stem = os.path.join(records_dir, f"{configuration}_fold{fold}")
    return stem + ".npz", stem + ".json"


def _run_description(run_dir):
    from keraslm.experiments.runs import recorded_training_seconds
    from keraslm.run_folder import RunFolder

    folder = RunFolder(run_dir)
    config = folder.read_config()
    return {"run": os.path.basename(run_dir), "model_sha256": _sha256(folder.model_path),
            "training_seconds": recorded_training_seconds(run_dir),
            "precision": (config.get("resolved_precision") or {}).get("precision")}


def save(runs_dir, records_dir, dataset_root, folds, log=print):
    """Records every (configuration, fold) whose runs have finished and whose record is missing
    or of other models; returns the paths written."""
    from keraslm.datasets import isbi2015
    from keraslm.files import atomic_path, write_json
    from keraslm.precision import describe_machine
    from keraslm.prediction import combine_detectors, load_detector, predict
    from keraslm.run_folder import RunFolder

    senior = isbi2015(dataset_root)
    junior_file = os.path.join(dataset_root, "landmarks_junior.csv")
    junior = (isbi2015(dataset_root, landmarks_file="landmarks_junior.csv")
              if os.path.isfile(junior_file) else None)
    written = []
    for fold in folds:
        for configuration, (global_kinds, local_kinds, _) in CONFIGURATIONS.items():
            run_dirs = [os.path.join(runs_dir, f"{kind}_fold{fold}")
                        for kind in global_kinds + local_kinds]
            if not all(RunFolder(d).is_finished() for d in run_dirs):
                continue
            runs = [_run_description(d) for d in run_dirs]
            npz_path, json_path = record_paths(records_dir, configuration, fold)
            if os.path.isfile(json_path):
                with open(json_path, encoding="utf-8") as handle:
                    if [r["model_sha256"] for r in json.load(handle)["runs"]] == [
                            r["model_sha256"] for r in runs]:
                        continue
            # The images the runs held out (all of them the same), with the senior's landmarks
            # - also for runs trained on other labels.
            held_out_ids = {tuple(RunFolder(d).read_metrics()["validation_ids"]) for d in run_dirs}
            if len(held_out_ids) != 1:
                raise SystemExit(f"{configuration} fold {fold}: the runs "
                                 f"{', '.join(map(os.path.basename, run_dirs))} held out "
                                 "different images")
            held_out = senior.subset(list(held_out_ids.pop()))
            log(f"recording {configuration} fold {fold}: "
                f"{', '.join(os.path.basename(d) for d in run_dirs)}")
            models = [load_detector(os.path.join(d, "model.keras")) for d in run_dirs]
            images = [held_out.read_image(r) for r in held_out.records]
            global_answers = predict(combine_detectors(models[:len(global_kinds)]), images)
            detector = combine_detectors(models)
            answers = predict(detector, images[:1])  # Traced once: the time is per image.
            started = time.perf_counter()
            answers += predict(detector, images[1:])
            seconds = time.perf_counter() - started
            arrays = {"ids": np.array(held_out.ids),
                      "senior_mm": np.stack([r.points_mm for r in held_out.records]),
                      "global_mm": np.stack([a.points_mm for a in global_answers]),
                      "refined_mm": np.stack([a.points_mm for a in answers]),
                      "confidence": np.stack([a.confidence for a in answers]),
                      "spread_mm": np.stack([a.spread_mm for a in answers]),
                      "second_peak": np.stack([a.second_peak for a in answers])}
            if len(global_kinds) > 1:
                # An ensemble's members one by one (member k: global run k refined by local
                # run k): how far they disagree is a candidate signal for the flag.
                members = [(models[k], models[len(global_kinds) + k])
                           for k in range(len(global_kinds))]
                arrays["member_global_mm"] = np.stack([
                    np.stack([a.points_mm for a in predict(scn, images)]) for scn, _ in members])
                arrays["member_refined_mm"] = np.stack([
                    np.stack([a.points_mm for a in predict(combine_detectors(pair), images)])
                    for pair in members])
            if junior is not None:
                arrays["junior_mm"] = np.stack([junior.record(i).points_mm for i in held_out.ids])
            os.makedirs(records_dir, exist_ok=True)
            with atomic_path(npz_path, suffix=".npz") as temporary:
                with open(temporary, "wb") as handle:
                    np.savez_compressed(handle, **arrays)
            write_json(json_path, {
                "configuration": configuration, "fold": fold, "num_folds": NUM_FOLDS,
                "landmark_names": list(senior.landmark_names), "runs": runs,
                "prediction_seconds_per_image": seconds / max(len(images) - 1, 1),
                "machine": describe_machine(),
                "recorded": time.strftime("%Y-%m-%d %H:%M %Z")})
            written += [npz_path, json_path]
    return written


def load_records(records_dir):
    """{configuration: {fold: (arrays dict, description dict)}} of the records in the folder."""
    records = {}
    for configuration in CONFIGURATIONS:
        for fold in range(NUM_FOLDS):
            npz_path, json_path = record_paths(records_dir, configuration, fold)
            if not (os.path.isfile(npz_path) and os.path.isfile(json_path)):
                continue
            with np.load(npz_path) as stored:
                arrays = {key: stored[key] for key in stored.files}
            with open(json_path, encoding="utf-8") as handle:
                records.setdefault(configuration, {})[fold] = (arrays, json.load(handle))
    return records


def _errors(predicted, truth, ids, names):
    from keraslm.evaluation import point_errors

    return point_errors(predicted, truth, tuple(str(i) for i in ids), tuple(names))


def _blended(parts):
    """Per fold, the blended points (weights fitted on the other folds) and the weights fitted
    on all of them; with one fold, None."""
    from keraslm.experiments.runs import StagePoints, blended_fold_points

    if len(parts) < 2:
        return None, None
    return blended_fold_points([StagePoints(tuple(p["ids"]), p["global_mm"], p["refined_mm"],
                                            p["senior_mm"]) for p in parts])


def configuration_rows(configuration, by_fold, names):
    """(pooled rows, per-fold rows, per-landmark tables, blend weights or None, the answer per
    fold: the blended points where there are two folds or more, else the refined ones)."""
    from keraslm.evaluation import per_landmark, pool, summarize

    label = configuration
    folds = sorted(by_fold)
    parts = [by_fold[f][0] for f in folds]
    blended, weights = _blended(parts)
    stages = [("global stage", [p["global_mm"] for p in parts]),
              ("refined", [p["refined_mm"] for p in parts])]
    if blended is not None:
        stages.append(("blended", blended))
    rows, fold_rows, landmarks = [], [], {}
    for stage, points in stages:
        errors = [_errors(pts, p["senior_mm"], p["ids"], names) for pts, p in zip(points, parts)]
        method = f"{label}, {stage}"
        pooled = pool(errors)
        rows.append({"method": f"{method} (fold{'s' if len(folds) > 1 else ''} "
                               f"{', '.join(map(str, folds))})", "summary": summarize(pooled)})
        fold_rows += [{"method": f"{method}, fold {f}", "summary": summarize(e)}
                      for f, e in zip(folds, errors)]
        landmarks[method] = per_landmark(pooled)
    return rows, fold_rows, landmarks, weights, dict(zip(folds, stages[-1][1]))


def ranking_figures(score, errors, budget=0.15):
    """What a score's ranking allows, whatever the threshold: (errors > 4 mm and errors > 10 mm
    among the `budget` share of landmarks it ranks highest - the issue's 15 % -, the share one
    must flag, highest scores first, to catch 60 % of the errors > 4 mm - the issue's target)."""
    ranked = errors.ravel()[np.argsort(-score.ravel(), kind="stable")]
    top = ranked[:int(budget * ranked.size)]
    caught = np.cumsum(ranked > 4.0)
    share = (np.argmax(caught >= 0.6 * caught[-1]) + 1) / ranked.size
    return int((top > 4.0).sum()), int((top > 10.0).sum()), float(share)


def calibration_from_records(by_fold, names, shapes_mm, shape_vote_margin=2.0,
                             second_peak_power=2.0, source=None, local_weight=None):
    """The shipped model's calibration refitted on recorded held-out predictions
    (`{fold: (arrays, description)}` of one configuration, two folds or more): per-landmark
    blend weights (`local_weight`, on all folds), the heatmap calibration of the blended points'
    errors against the senior - each fold's points blended with weights fitted on the other
    folds - with the confidence damped by the global second peak (`second_peak_power`; 0: not),
    and a shape vote fitted on `shapes_mm` (the training shapes). Given `local_weight` (one per
    landmark, e.g. the shipped model's own), the blend is kept: every fold's points are blended
    with those weights and only the rest is refitted, so the model's points do not change.
    Returns (calibration, a dict of cross-fitted figures: each fold's expected errors from a
    calibration fitted on the other folds, with the vote fitted on their held-out shapes)."""
    from keraslm.calibration import (calibration_quality, cross_fitted_expected_error,
                                     fit_calibration, fit_shape_vote)

    folds = sorted(by_fold)
    parts = [by_fold[f][0] for f in folds]
    if len(parts) < 2:
        raise SystemExit("a calibration from records needs two recorded folds or more")
    if local_weight is None:
        blended, weights = _blended(parts)
    else:
        weights = np.asarray(local_weight, np.float64)
        if weights.shape != (len(names),):
            raise SystemExit(f"local_weight: {len(names)} weights expected (one per landmark), "
                             f"got shape {weights.shape}")
        blended = [weights[:, None] * p["refined_mm"] + (1 - weights[:, None]) * p["global_mm"]
                   for p in parts]
    stacked = {key: np.concatenate([p[key] for p in parts])
               for key in ("confidence", "spread_mm", "second_peak", "senior_mm")}
    points = np.concatenate(blended)
    errors = np.linalg.norm(points - stacked["senior_mm"], axis=-1)
    groups = np.repeat(np.arange(len(parts)), [len(p["ids"]) for p in parts])
    damping = ({} if not second_peak_power else
               {"second_peak": stacked["second_peak"], "second_peak_power": second_peak_power})
    calibration = fit_calibration(stacked["confidence"], stacked["spread_mm"], errors, names,
                                  source=source, **damping)
    calibration["local_weight"] = [float(w) for w in weights]
    calibration["shape_vote"] = fit_shape_vote(shapes_mm, names, margin=shape_vote_margin)
    expected = cross_fitted_expected_error(
        stacked["confidence"], stacked["spread_mm"], errors, names, groups=groups,
        points_mm=points, shapes_mm=stacked["senior_mm"], shape_vote_margin=shape_vote_margin,
        **damping)
    quality = calibration_quality(expected, errors)
    far = errors > 10.0
    quality.pop("bins", None)
    ids = np.concatenate([p["ids"] for p in parts])
    junior = (np.concatenate([p["junior_mm"] for p in parts])
              if all("junior_mm" in p for p in parts) else None)
    # Each error > 10 mm, and where the junior doctor puts that landmark: an error the second
    # doctor shares with the model is a disputed label rather than a far-off point.
    far_points = [{"image": str(ids[i]), "landmark": names[k], "error_mm": float(errors[i, k]),
                   "expected_error_mm": float(expected[i, k]),
                   **({} if junior is None else {
                       "junior_to_answer_mm": float(np.linalg.norm(junior[i, k] - points[i, k])),
                       "junior_to_senior_mm": float(np.linalg.norm(
                           junior[i, k] - stacked["senior_mm"][i, k]))})}
                  for i, k in zip(*np.nonzero(far))]
    large_in_budget, _, share = ranking_figures(expected, errors)

    def flagged_at(flag_mm):
        return {"flag_mm": flag_mm, "flagged_fraction": float((expected > flag_mm).mean()),
                "large_caught": int((expected[errors > 4.0] > flag_mm).sum()),
                "far_caught": int((expected[far] > flag_mm).sum())}

    at_default = flagged_at(2.5)
    quality.update({"far_points": far_points, "flagged_for_60_percent": share,
                    "large_in_top_15_percent": large_in_budget,
                    # What other thresholds give (keraslm-predict --flag-mm).
                    "operating_points": [flagged_at(t) for t in OPERATING_FLAG_MM]})
    quality.update({"num_far": int(far.sum()), "far_caught": at_default["far_caught"],
                    "large_caught": at_default["large_caught"],
                    "mre_mm": float(errors.mean()), "folds": folds,
                    "blend_weights": "fitted" if local_weight is None else "kept"})
    calibration["quality_cross_fitted"] = quality
    return calibration, quality


def table(records_dir, output_dir, argv):
    from keraslm.evaluation.tables import format_landmark_table, format_sdr_table
    from keraslm.experiments.runs import write_experiment

    records = load_records(records_dir)
    if not records:
        raise SystemExit(f"{records_dir}: no records (python experiments/isbi2015_records.py save)")
    names = next(iter(next(iter(records.values())).values()))[1]["landmark_names"]
    lines = ["# ISBI 2015: cross-validation from the recorded held-out predictions", "",
             "Each fold's held-out images (5 folds of the 150, seed 0), measured against the senior "
             "doctor's landmarks (the challenge's ground truth). 'global stage' = the global "
             "network(s) alone; 'refined' = the local stage(s) around their estimate; 'blended' "
             "= per landmark w x refined + (1 - w) x global with w fitted on the other recorded "
             "folds (what a calibrated export answers). Records: "
             f"`{os.path.relpath(records_dir, REPO)}`.", ""]
    payload = {"configurations": {}}
    answers = {}
    for configuration, by_fold in records.items():
        rows, fold_rows, landmarks, weights, answer = configuration_rows(configuration, by_fold,
                                                                          names)
        answers[configuration] = answer
        lines += [f"## {configuration}: {CONFIGURATIONS[configuration][2]}", "",
                  format_sdr_table(rows), "",
                  "Per fold:", "", format_sdr_table(fold_rows), "", "Per landmark:", "",
                  format_landmark_table(landmarks), ""]
        if weights is not None:
            lines += ["Blend weights w fitted on all recorded folds: " + ", ".join(
                f"{n} {w:.1f}" for n, w in zip(names, weights)), ""]
        hours = ["| fold | run | training h | precision | recorded on |", "|---|---|---|---|---|"]
        for fold in sorted(by_fold):
            description = by_fold[fold][1]
            for run in description["runs"]:
                seconds = run["training_seconds"]
                hours.append(f"| {fold} | {run['run']} | "
                             f"{'' if seconds is None else f'{seconds / 3600:.2f}'} | "
                             f"{run['precision']} | {description['machine']} |")
        lines += ["Training time of each run (wall time recorded by the run; the runs trained "
                  "one at a time unless the machine was shared) and the machine that recorded "
                  "the predictions (the queue records right after training, on the same "
                  "machine):", ""] + hours + [""]
        flags = _flag_lines(by_fold, names) if len(by_fold) >= 2 else ([], {})
        lines += flags[0]
        payload["configurations"][configuration] = {
            "folds": sorted(by_fold), "rows": _json_rows(rows), "per_fold": _json_rows(fold_rows),
            "local_weight": None if weights is None else dict(zip(names, map(float, weights))),
            "runs": {fold: by_fold[fold][1]["runs"] for fold in sorted(by_fold)},
            "flag": flags[1]}
    if "pair" in records and "meanlabels" in records and all(
            "junior_mm" in arrays for configuration in ("pair", "meanlabels")
            for arrays, _ in records[configuration].values()):
        lines += _mean_label_lines(records, answers, names, payload)
    return write_experiment(output_dir, lines, payload, "experiments/isbi2015_records.py", argv)


def _flag_lines(by_fold, names):
    """The flag (expected error above 2.5 mm) of the blended answers, cross-fitted over the
    recorded folds, with the shipped rule (heatmap calibration and shape vote, margin 2) with
    and without the second peak: (table lines, figures by setting)."""
    shapes = np.concatenate([by_fold[f][0]["senior_mm"] for f in sorted(by_fold)])
    figures = {}
    lines = ["Flag (expected error above 2.5 mm) of the blended points, cross-fitted over the "
             "recorded folds (each fold's calibration and shape vote fitted on the other folds' "
             "held-out predictions and shapes):", "",
             "| calibration | flagged % | errors > 4 mm caught | errors > 10 mm caught | "
             "Spearman | errors > 4 mm among the 15 % highest | % to flag for 60 % of > 4 mm |",
             "|---|---|---|---|---|---|---|"]
    from keraslm.errors import KeraslmError

    for label, power in (("heatmap x (1 - second peak)^2, shape vote", 2.0),
                         ("heatmap, shape vote (version 8's rule)", 0.0)):
        try:
            _, quality = calibration_from_records(by_fold, names, shapes, 2.0, power)
        except KeraslmError as error:  # E.g. too few recorded shapes for a vote.
            return [f"No flag figures: {error}.", ""], {}
        figures[label] = quality
        lines.append(f"| {label} | {100 * quality['flagged_fraction']:.1f} | "
                     f"{quality['large_caught']} of {quality['num_large']} | "
                     f"{quality['far_caught']} of {quality['num_far']} | "
                     f"{quality['spearman']:.3f} | {quality['large_in_top_15_percent']} | "
                     f"{100 * quality['flagged_for_60_percent']:.1f} |")
    lines += ["", "The last two columns are what the ranking allows, whatever the threshold: "
              "the errors > 4 mm among the 15 % of landmarks with the highest expected error "
              "(the issue's budget), and the share of landmarks one must flag, highest expected "
              "errors first, to catch 60 % of the errors > 4 mm (the issue's target).", ""]
    shipped = next(iter(figures))
    lines += [f"The same cross-fitted expected errors ({shipped}) flagged at other thresholds "
              "(`keraslm-predict --flag-mm MM`; 2.5 is the default):", "",
              "| flag above mm | flagged % | errors > 4 mm caught | errors > 10 mm caught |",
              "|---|---|---|---|"]
    quality = figures[shipped]
    lines += [f"| {point['flag_mm']:g} | {100 * point['flagged_fraction']:.1f} | "
              f"{point['large_caught']} of {quality['num_large']} | "
              f"{point['far_caught']} of {quality['num_far']} |"
              for point in quality["operating_points"]]
    lines.append("")
    far_points = quality["far_points"]
    if far_points and "junior_to_answer_mm" in far_points[0]:
        lines += [f"The errors > 10 mm ({shipped}), and where the junior doctor "
                  "puts the landmark:", "",
                  "| image | landmark | error mm | expected error mm | junior to the answer mm | "
                  "junior to the senior mm |", "|---|---|---|---|---|---|"]
        lines += [f"| {f['image']} | {f['landmark']} | {f['error_mm']:.1f} | "
                  f"{f['expected_error_mm']:.2f} | {f['junior_to_answer_mm']:.1f} | "
                  f"{f['junior_to_senior_mm']:.1f} |" for f in far_points]
        lines.append("")
    return lines, figures


def _json_rows(rows):
    from keraslm.experiments.runs import json_rows

    return json_rows(rows)


def _mean_label_lines(records, answers, names, payload):
    """The senior-label pair against the mean-label pair on the folds both have, against each
    doctor and their mean."""
    from keraslm.evaluation import per_landmark, pool, summarize

    folds = sorted(set(records["pair"]) & set(records["meanlabels"]))
    lines = ["## Trained on the senior's labels or on the mean of both doctors' labels", "",
             f"Folds {', '.join(map(str, folds))} (the answer of each: blended where two folds "
             "or more are recorded, else refined). MRE in mm against each reference:", "",
             "| trained on | vs senior | vs junior | vs doctors' mean |", "|---|---|---|---|"]
    per_reference, result = {}, {}
    for configuration, trained_on in (("pair", "senior"), ("meanlabels", "mean of both")):
        means = []
        for reference in ("senior", "junior", "mean"):
            errors = []
            for fold in folds:
                arrays = records[configuration][fold][0]
                truth = (arrays["senior_mm"] if reference == "senior" else arrays["junior_mm"]
                         if reference == "junior"
                         else (arrays["senior_mm"] + arrays["junior_mm"]) / 2.0)
                errors.append(_errors(answers[configuration][fold], truth, arrays["ids"], names))
            pooled = pool(errors)
            per_reference[configuration, reference] = per_landmark(pooled)
            means.append(summarize(pooled)["mean_mm"])
        result[trained_on] = dict(zip(("senior", "junior", "mean"), means))
        lines.append(f"| {trained_on} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    # For scale: the junior doctor's own landmarks on the same images.
    parts = [records["pair"][fold][0] for fold in folds]
    doctors = pool([_errors(p["junior_mm"], p["senior_mm"], p["ids"], names) for p in parts])
    apart = summarize(doctors)["mean_mm"]
    result["junior doctor"] = {"senior": apart, "junior": 0.0, "mean": apart / 2.0}
    lines.append(f"| (the junior doctor's own landmarks) | {apart:.2f} | 0 | {apart / 2:.2f} |")
    by_fold = {trained_on: [summarize(_errors(answers[configuration][fold],
                                              records[configuration][fold][0]["senior_mm"],
                                              records[configuration][fold][0]["ids"], names)
                                      )["mean_mm"] for fold in folds]
               for configuration, trained_on in (("pair", "senior"), ("meanlabels", "mean"))}
    lines += ["", "Against the senior per fold (" + ", ".join(map(str, folds)) + "): trained on "
              + "; on ".join(f"{label} labels " + " / ".join(f"{m:.2f}" for m in mres)
                             + " mm" for label, mres in (("the senior's", by_fold["senior"]),
                                                         ("the mean", by_fold["mean"])))
              + ". The mean labels "
              "measure better against the senior (the challenge's ground truth) on "
              f"{sum(m < s for s, m in zip(by_fold['senior'], by_fold['mean']))} of "
              f"{len(folds)} fold(s).",
              "", "Per landmark, MRE against the senior (mm), beside how far the two doctors are "
              "apart:", "",
              "| landmark | senior labels | mean labels | change | doctors apart |",
              "|---|---|---|---|---|"]
    senior_rows = per_reference["pair", "senior"]
    mean_rows = per_reference["meanlabels", "senior"]
    for name, a, b, d in zip(names, senior_rows, mean_rows, per_landmark(doctors)):
        lines.append(f"| {name} | {a['mean_mm']:.2f} | {b['mean_mm']:.2f} | "
                     f"{b['mean_mm'] - a['mean_mm']:+.2f} | {d['mean_mm']:.2f} |")
    payload["mean_labels"] = {"folds": folds, "mre_mm": result, "mre_by_fold_mm": by_fold}
    return lines + [""]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("save", "table"),
                        help="save: record the finished runs' held-out predictions; table: the "
                        "tables from the records")
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="the run folders (save)")
    parser.add_argument("--records-dir", default=RECORDS_DIR)
    parser.add_argument("--dataset-root", default=os.path.join(REPO, "..", "shared", "data",
                                                               "isbi2015-train"))
    parser.add_argument("--folds", default="0,1,2,3,4", help="folds to record (save)")
    parser.add_argument("--output-dir", default=RECORDS_DIR, help="where table writes (table)")
    args = parser.parse_args(argv)
    if args.command == "save":
        written = save(args.runs_dir, args.records_dir, args.dataset_root,
                       [int(f) for f in args.folds.split(",")])
        print(f"{len(written) // 2} record(s) written" if written else "nothing new to record")
        return 0
    print(table(args.records_dir, args.output_dir, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
