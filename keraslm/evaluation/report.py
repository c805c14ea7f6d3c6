"""Evaluation outputs: prediction CSVs, metrics.json, report.md and plots in one folder.

`write_report(output_dir, evaluation)` writes (each file atomically):

    predictions.csv          the authors' headerless layout `id,x0,y0[,z0],x1,...`, physical mm
    predictions_named.csv    named layout `id,<name>_x,<name>_y[,<name>_z],...`, physical mm
    metrics.json             summary, per-landmark table, per-image errors, sources
    report.md                Table-1-style row, SDR and outliers, per-landmark table
    cumulative_error.png     cumulative error curve
    landmark_errors.png      per-landmark error box plot
    worst_<rank>_<id>.png    ground truth vs prediction on the worst images (if images are known)
    reliability.png          expected vs actual error (when the model gives expected errors)

`write_calibration` fits expected errors to the held-out predictions (`keraslm.calibration`).

`format_summary` gives the console table the scripts print, `format_baseline` the line that
sets the model beside the mean-position baseline.
"""
import json
import os
import re
import shutil
import tempfile

from keraslm.errors import KeraslmError
from keraslm.evaluation.metrics import OUTLIER_RADII_MM, SDR_RADII_MM, outlier_key, sdr_key
from keraslm.evaluation.tables import format_number, json_finite, json_number, table1_row
from keraslm.io import LandmarkTable, write_landmarks
from keraslm.files import write_text

PREDICTIONS_FILE = "predictions.csv"
NAMED_PREDICTIONS_FILE = "predictions_named.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CUMULATIVE_PLOT = "cumulative_error.png"
LANDMARK_PLOT = "landmark_errors.png"
RELIABILITY_PLOT = "reliability.png"
CALIBRATION_PLOT = "calibration_reliability.png"


def _unit(summary):
    normalization = summary.get("normalization")
    if normalization:
        return f"mm, normalised to {normalization['distance_mm']:g} mm between landmarks " \
               f"{normalization['landmarks'][0]} and {normalization['landmarks'][1]}"
    return "mm"


def _missing_line(summary):
    return (
        f"{summary['count']} points evaluated in {summary['num_images']} images x "
        f"{summary['num_landmarks']} landmarks; excluded: {summary['missing_ground_truth']} missing "
        f"ground truth, {summary['missing_predictions']} missing predictions"
        + (f", {summary['missing_reference']} images without the reference distance"
           if summary.get("normalization") else "")
    )


def format_summary(summary, method):
    """str. The summary as a plain-text table for the console (several lines)."""
    outlier = f"outliers > {summary.get('outlier_mm', 10.0):g} mm"
    header = f"{'method':<16} {'median':>8} {'mean +- SD':>16} {outlier:>22}"
    row = (
        f"{method:<16} {format_number(summary.get('median_mm')):>8} "
        f"{format_number(summary.get('mean_mm')) + ' +- ' + format_number(summary.get('std_mm')):>16} "
        f"{str(summary.get('outliers', 0)) + ' (' + format_number(summary.get('outlier_percent')) + ' %)':>22}"
    )
    sdr = "  ".join(f"{r:g} mm {format_number(summary.get(sdr_key(r)), 1)} %" for r in SDR_RADII_MM)
    outliers = "  ".join(
        f"> {r:g} mm {summary.get(outlier_key(r), 0)}" for r in OUTLIER_RADII_MM
    )
    return "\n".join([
        f"point error ({_unit(summary)})",
        header,
        row,
        f"SDR: {sdr}",
        f"outliers: {outliers}",
        _missing_line(summary),
    ])


def format_baseline(summary, baseline_summary):
    """One line: the model's error beside the mean-position baseline's (each landmark at its
    mean training position) on the same points, with a warning when the model does not beat it;
    a note when there is no baseline (a model that did not record its training positions)."""
    if baseline_summary is None:
        return ("mean-position baseline: not available (the model does not record its training "
                "positions; models trained with keraslm 0.2.1 or newer do)")
    model, base = summary.get("mean_mm"), baseline_summary.get("mean_mm")
    line = (f"mean-position baseline (each landmark at its mean training position): median "
            f"{format_number(baseline_summary.get('median_mm'))}, mean {format_number(base)} "
            f"{_unit(baseline_summary)}; the model: median {format_number(summary.get('median_mm'))}, "
            f"mean {format_number(model)}")
    if model is None or base is None:
        return line
    if model >= base:
        return line + (" - WARNING: the model does not beat the baseline: it has not learned "
                       "more than where the landmarks lie on average (train longer, check the "
                       "plan and the loss curve)")
    return line + f" ({base / max(model, 1e-9):.1f} x better)"


def _from_predictions_file(evaluation):
    """Whether the evaluation scored a predictions CSV (no model: no mean-position baseline)."""
    return bool(evaluation.sources) and all("predictions" in source for source in evaluation.sources)


def _markdown(evaluation, summary, landmarks, plots):
    lines = [
        f"# Landmark localization: {evaluation.method}",
        "",
        f"Point errors in {_unit(summary)}; {_missing_line(summary)}.",
        "",
        "| method | median | mean +- SD | outliers > "
        f"{summary.get('outlier_mm', 10.0):g} mm (count, %) |",
        "|---|---|---|---|",
        table1_row(summary, evaluation.method),
        "",
        *([] if _from_predictions_file(evaluation) else [
            format_baseline(summary, evaluation.baseline_summary()) + ".", ""]),
        "## Success detection rate and outliers",
        "",
        "| " + " | ".join(f"SDR {r:g} mm" for r in SDR_RADII_MM) + " | "
        + " | ".join(f"> {r:g} mm" for r in OUTLIER_RADII_MM) + " | max |",
        "|" + "---|" * (len(SDR_RADII_MM) + len(OUTLIER_RADII_MM) + 1),
        "| " + " | ".join(f"{format_number(summary.get(sdr_key(r)), 1)} %" for r in SDR_RADII_MM) + " | "
        + " | ".join(f"{summary.get(outlier_key(r), 0)}" for r in OUTLIER_RADII_MM)
        + f" | {format_number(summary.get('max_mm'))} |",
        "",
        "## Per landmark",
        "",
        "| # | landmark | n | missing | mean | SD | median | max | SDR 2 mm | > 10 mm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(landmarks):
        lines.append(
            f"| {index} | {row['name']} | {row['count']} | {row['missing']} | "
            f"{format_number(row['mean_mm'])} | {format_number(row['std_mm'])} | {format_number(row['median_mm'])} | "
            f"{format_number(row['max_mm'])} | {format_number(row[sdr_key(2.0)], 1)} % | {row['outliers']} |"
        )
    quality = _expected_error_quality(evaluation)
    if quality is not None:
        lines += ["", "## Expected error (the model's calibration)", "", format_calibration_quality(quality)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    lines += ["", "## Sources", ""]
    for source in evaluation.sources:
        lines.append("- " + ", ".join(
            f"{key}: {value}" for key, value in source.items() if key != "ids" and value is not None
        ) + (f" ({len(source['ids'])} images)" if "ids" in source else ""))
    return "\n".join(lines) + "\n"


def _expected_error_quality(evaluation):
    if evaluation.expected_error_mm is None:
        return None
    from keraslm.calibration import calibration_quality

    return calibration_quality(evaluation.expected_error_mm, evaluation.errors.errors_mm)


def format_calibration_quality(quality):
    """One Markdown/console line describing `keraslm.calibration.calibration_quality`."""
    return (f"Spearman correlation of expected and actual error {quality['spearman']:.3f} over "
            f"{quality['num_points']} points; expected > {quality['flag_mm']:g} mm flags "
            f"{100 * quality['flagged_fraction']:.1f} % of the landmarks and "
            + (f"catches {100 * quality['caught_fraction']:.1f} % of the {quality['num_large']} "
               f"errors > {quality['large_mm']:g} mm" if quality["num_large"]
               else f"no error is > {quality['large_mm']:g} mm to catch")
            + f"; mean expected {quality['mean_expected_mm']:.2f} mm, "
            f"mean actual {quality['mean_actual_mm']:.2f} mm.")


def _metrics(evaluation, summary, landmarks):
    errors = evaluation.errors
    image_means = errors.image_mean_mm()
    return {
        "method": evaluation.method,
        "units": _unit(summary),
        "summary": summary,
        "per_landmark": landmarks,
        "per_image": [
            {"id": image_id, "mean_mm": json_number(float(mean)),
             "errors_mm": [json_number(float(e)) for e in row]}
            for image_id, mean, row in zip(evaluation.ids, image_means, errors.errors_mm)
        ],
        "landmark_names": list(evaluation.landmark_names),
        "sources": list(evaluation.sources),
        "expected_error": _expected_error_quality(evaluation),
        "mean_position_baseline": evaluation.baseline_summary(),
    }


def _file_label(image_id):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", image_id)


def write_calibration(path, evaluation, output_dir=None, plots=True, local_weight=None,
                      groups=None, shape_vote_margin=None, second_peak_power=None):
    """Fits a calibration of expected errors (`keraslm.calibration`) to an evaluation's
    held-out predictions and writes it to `path` (JSON), with its quality measured by
    cross-fitting (each image's expected errors from a calibration fitted without it: without
    its group of `groups` `(num_images,)` - e.g. its run's, `keraslm.evaluation.held_out_groups`
    - or, by default, without its fifth of the images by position) and, in
    `output_dir`, the cross-fitted reliability plot. `local_weight` (a coarse-to-fine model's
    per-landmark blend of its stages, `keraslm.evaluation.blend_evaluation`; the evaluation
    then holds the blended points) is stored with it. `shape_vote_margin`: the calibration also
    holds a shape vote (`keraslm.calibration.fit_shape_vote`) fitted on the evaluated images'
    annotated shapes (complete ones; pooled cross-validation folds: the whole dataset), and
    the cross-fitted quality counts it (each round's vote fitted on the other rounds' shapes).
    `second_peak_power` (>= 0; None: `keraslm.calibration.SECOND_PEAK_POWER`): where the
    predictions carry the global second peak, the confidence is damped by it to this power
    (`keraslm.calibration.fit_calibration`); 0 leaves it out.

    Returns:
        (calibration dict, quality dict, list of written paths).

    Raises:
        KeraslmError: the predictions carry no confidence / spread (an export made before
            keraslm gave them; use the .keras models).
    """
    from keraslm.calibration import (SECOND_PEAK_POWER, calibration_quality,
                                     cross_fitted_expected_error, fit_calibration, fit_shape_vote)

    if evaluation.confidence is None or evaluation.spread_mm is None:
        raise KeraslmError(
            "these predictions carry no heatmap spread to calibrate (an export made before "
            "keraslm gave spread_mm); calibrate with the .keras models (--runs)")
    errors = evaluation.errors.errors_mm
    sources = "; ".join(str(source.get("run") or source.get("model")) for source in evaluation.sources)
    if second_peak_power is None:
        second_peak_power = SECOND_PEAK_POWER
    second_peak = evaluation.second_peak if second_peak_power else None
    damping = ({} if second_peak is None
               else {"second_peak": second_peak, "second_peak_power": second_peak_power})
    calibration = fit_calibration(
        evaluation.confidence, evaluation.spread_mm, errors, evaluation.landmark_names,
        source=f"held-out predictions of {len(evaluation.ids)} images: {sources}", **damping)
    stages = [source.get("stages") for source in evaluation.sources]
    if stages and all(s is not None and s == stages[0] for s in stages):
        # The stage structure it was fitted on: an export checks that the model has it.
        calibration["stages"] = dict(stages[0])
    if shape_vote_margin is not None:
        calibration["shape_vote"] = fit_shape_vote(evaluation.ground_truth_mm,
                                                   evaluation.landmark_names,
                                                   margin=shape_vote_margin)
    expected = cross_fitted_expected_error(evaluation.confidence, evaluation.spread_mm, errors,
                                           evaluation.landmark_names,
                                           groups=groups, points_mm=evaluation.predicted_mm,
                                           shapes_mm=evaluation.ground_truth_mm,
                                           shape_vote_margin=shape_vote_margin, **damping)
    quality = calibration_quality(expected, errors)
    calibration["quality_cross_fitted"] = {k: v for k, v in quality.items() if k != "bins"}
    if local_weight is not None:
        calibration["local_weight"] = [float(w) for w in local_weight]
    written = [path]
    write_text(path, json.dumps(json_finite(calibration), indent=2, allow_nan=False) + "\n")
    if plots and output_dir is not None:
        from keraslm.evaluation import plots as plotting

        os.makedirs(output_dir, exist_ok=True)
        plot_path = os.path.join(output_dir, CALIBRATION_PLOT)
        plotting.plot_reliability(plot_path, expected, errors,
                                  title="Expected vs actual error (cross-fitted)")
        written.append(plot_path)
    return calibration, quality, written


def _remove_earlier_plots(output_dir):
    """Removes the plots an earlier report wrote into `output_dir` (its worst images, and plots
    this report may not write: without --plots, without expected errors), so that the folder
    shows this evaluation only. Other files are left alone."""
    for name in os.listdir(output_dir):
        if (name in (CUMULATIVE_PLOT, LANDMARK_PLOT, RELIABILITY_PLOT, CALIBRATION_PLOT)
                or (name.startswith("worst_") and name.endswith(".png"))):
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):
                os.remove(path)


def write_report(output_dir, evaluation, plots=True, num_worst=4, progress=None):
    """Writes predictions, metrics, report and plots of an evaluation into `output_dir`.

    Args:
        output_dir: str. Created if needed; files of the same names are replaced, and the
            plots of an earlier report (worst images, reliability) removed - only once every
            file of this report is written (into a staging folder first), so a failure leaves
            the earlier report as it was.
        evaluation: keraslm.evaluation.Evaluation.
        plots: bool. Write the PNG plots.
        num_worst: int. Overlays of this many worst images (by mean error), if images are known.
        progress: callable(str), optional.

    Returns:
        list of str: the written file paths.
    """
    progress = progress or (lambda message: None)
    summary, landmarks = evaluation.summary(), evaluation.per_landmark()
    table = LandmarkTable(evaluation.ids, evaluation.landmark_names, evaluation.predicted_mm)
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".keraslm-evaluate.", dir=output_dir)
    try:
        names = _write_report_files(staging, evaluation, summary, landmarks, table, plots,
                                    num_worst, progress)
        for name in names:  # Checked before any file is replaced: all or nothing.
            if os.path.isdir(os.path.join(output_dir, name)):
                raise KeraslmError(f"{os.path.join(output_dir, name)} is a folder; the report "
                                   "writes a file of that name: move it or choose another "
                                   "--output-dir")
        _remove_earlier_plots(output_dir)  # All written: the new set replaces the old.
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [os.path.join(output_dir, name) for name in names]


def _write_report_files(folder, evaluation, summary, landmarks, table, plots, num_worst,
                        progress):
    """`write_report`'s files into `folder`; returns their names (predictions, plots, metrics,
    report)."""
    names = [PREDICTIONS_FILE, NAMED_PREDICTIONS_FILE]
    write_landmarks(os.path.join(folder, PREDICTIONS_FILE), table, layout="headerless")
    write_landmarks(os.path.join(folder, NAMED_PREDICTIONS_FILE), table, layout="named")
    plot_files = []
    if plots:
        from keraslm.evaluation import plots as plotting

        progress("plotting")
        plotting.plot_cumulative_error(
            os.path.join(folder, CUMULATIVE_PLOT), {evaluation.method: evaluation.errors.valid}
        )
        plotting.plot_landmark_errors(
            os.path.join(folder, LANDMARK_PLOT), evaluation.errors.errors_mm, evaluation.landmark_names
        )
        plot_files += [CUMULATIVE_PLOT, LANDMARK_PLOT]
        if evaluation.expected_error_mm is not None:
            plotting.plot_reliability(os.path.join(folder, RELIABILITY_PLOT),
                                      evaluation.expected_error_mm, evaluation.errors.errors_mm)
            plot_files.append(RELIABILITY_PLOT)
        if evaluation.image_readers is not None:
            means = evaluation.errors.image_mean_mm()
            for rank, index in enumerate(evaluation.errors.worst_images(num_worst), 1):
                name = f"worst_{rank}_{_file_label(evaluation.ids[index])}.png"
                plotting.plot_overlay(
                    os.path.join(folder, name), evaluation.image_readers[index](),
                    evaluation.ground_truth_mm[index], evaluation.predicted_mm[index],
                    title=f"{evaluation.ids[index]}: mean error {means[index]:.2f} {_unit(summary)} "
                          "(green: ground truth, red: prediction)",
                )
                plot_files.append(name)
    write_text(os.path.join(folder, METRICS_FILE),
               json.dumps(json_finite(_metrics(evaluation, summary, landmarks)), indent=2,
                          allow_nan=False) + "\n")
    write_text(os.path.join(folder, REPORT_FILE), _markdown(evaluation, summary, landmarks, plot_files))
    return names + plot_files + [METRICS_FILE, REPORT_FILE]
