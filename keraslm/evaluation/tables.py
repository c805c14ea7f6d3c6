"""Markdown tables of point-error summaries, shared by evaluation reports and the experiment
drivers: numbers, the paper's Table 1 / Table 2 layout, SDR tables and per-landmark tables.

Every table takes `keraslm.evaluation.summarize` / `per_landmark` output (physical mm).
"""
import math

from keraslm.evaluation.metrics import SDR_RADII_MM, sdr_key


def format_number(value, digits=2):
    """str. `value` with `digits` decimals; "-" for None, NaN or infinity."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def json_number(value):
    """float or None: None for None, NaN or infinity (JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else value


def json_finite(payload):
    """`payload` with every float NaN or infinity (Python or numpy) inside dicts, lists and
    tuples replaced by None: what strict JSON readers (jq, JavaScript) accept."""
    if isinstance(payload, dict):
        return {key: json_finite(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [json_finite(value) for value in payload]
    if isinstance(payload, float) or (hasattr(payload, "dtype") and getattr(payload, "ndim", 1) == 0
                                      and payload.dtype.kind == "f"):
        return json_number(float(payload))
    return payload


def table1_row(summary, method):
    """str. A markdown row `| method | median | mean +- SD | outliers > 10 mm (count, %) |`."""
    return (
        f"| {method} | {format_number(summary.get('median_mm'))} | "
        f"{format_number(summary.get('mean_mm'))} +- {format_number(summary.get('std_mm'))} | "
        f"{summary.get('outliers', 0)} ({format_number(summary.get('outlier_percent'))} %) |"
    )


def format_paper_table(rows, include_set=True, include_weights=True):
    """Markdown table with the paper's Table 1 (or, without set and #w, Table 2) columns.

    Args:
        rows: sequence of dict with `method`, `input`, `target` (str), `summary`
            (`keraslm.evaluation.summarize` output), and `set` / `weights` (float ratio) when
            included.
        include_set: bool. First column "Set" (shown on the first row of each set only).
        include_weights: bool. Last column "#w".

    Returns:
        str. The table, one line per row, no trailing newline.
    """
    header = (["Set"] if include_set else []) + [
        "Method", "Input", "Target", "Median (mm)", "Mean +- SD (mm)", "Outliers > 10 mm"
    ] + (["#w"] if include_weights else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    previous_set = None
    for row in rows:
        summary = row["summary"]
        cells = []
        if include_set:
            cells.append(row["set"] if row["set"] != previous_set else "")
            previous_set = row["set"]
        cells += [
            row["method"], row["input"], row["target"], format_number(summary.get("median_mm")),
            f"{format_number(summary.get('mean_mm'))} +- {format_number(summary.get('std_mm'))}",
            f"{summary.get('outliers', 0)} ({format_number(summary.get('outlier_percent'), 3)} %)",
        ]
        if include_weights:
            cells.append(format_number(row["weights"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sdr_table(rows):
    """Markdown table: method, MRE +- SD, median, SDR at 2 / 2.5 / 3 / 4 mm, outliers > 10 mm.

    Args:
        rows: sequence of dict with `method` and `summary` (`summarize` output).
    """
    header = ["Method", "MRE +- SD (mm)", "Median (mm)"] + [
        f"SDR {r:g} mm" for r in SDR_RADII_MM] + ["Outliers > 10 mm"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        summary = row["summary"]
        lines.append("| " + " | ".join(
            [row["method"], f"{format_number(summary.get('mean_mm'))} +- {format_number(summary.get('std_mm'))}",
             format_number(summary.get("median_mm"))]
            + [f"{format_number(summary.get(sdr_key(r)), 1)} %" for r in SDR_RADII_MM]
            + [f"{summary.get('outliers', 0)} ({format_number(summary.get('outlier_percent'))} %)"]
        ) + " |")
    return "\n".join(lines)


def format_landmark_table(tables):
    """Markdown per-landmark table: mean +- SD and SDR 2 mm for each method.

    Args:
        tables: dict method -> `keraslm.evaluation.per_landmark` rows (same landmarks each).
    """
    methods = list(tables)
    header = ["Landmark"] + [f"{m} {column}" for m in methods for column in ("mean +- SD (mm)", "SDR 2 mm")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, first in enumerate(tables[methods[0]]):
        cells = [first["name"]]
        for method in methods:
            row = tables[method][index]
            cells += [f"{format_number(row['mean_mm'])} +- {format_number(row['std_mm'])}",
                      f"{format_number(row[sdr_key(2.0)], 1)} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
