"""Copy the generated experiment tables into the documentation's result pages (see --help).

Each experiment writes `experiments/results/<name>/table.md`; this script puts that file's text
between the markers `<!-- results:<name> -->` and `<!-- /results:<name> -->` of the page under
`docs/` that has them (`docs/results/*.md`, `docs/benchmarks.md`), so the site shows exactly
what the experiment generated (nothing typed by hand). Experiments that have not been run leave
a line saying so. Headings of the table files are demoted to fit under the page's section, and
plots the tables name are embedded as images, linked relative to the page (the site carries the
plots under their repository paths: docs/hooks.py).
"""
import argparse
import glob
import os
import posixpath
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = ("isbi2015_cv", "isbi2015_v4", "isbi2015_v6", "isbi2015_facing/fold0_global",
               "isbi2015_facing/fold0_global_flip", "isbi2015_facing/fold0_c2f",
               "isbi2015_facing/fold0_c2f_flip", "isbi2015_facing/fold0_c2f_mixed",
               "isbi2015_facing/fold1_global", "isbi2015_facing/fold1_c2f",
               "isbi2015_facing/fold1_c2f_retrained", "isbi2015_facing/fold1_c2f_flip",
               "isbi2015_flag/fold0", "isbi2015_flag/folds01", "isbi2015_flag/fold1",
               "isbi2015_annotators/fold0",
               "isbi2015_annotators/fold1", "isbi2015_queue", "isbi2015_records",
               "isbi2015_flag_signals", "isbi2015_flag_signals_ensemble", "table1_phantom2d",
               "table2_phantom3d", "benchmarks")
#: The command that writes an experiment's table, where it is not `experiments/<name>.py`.
COMMANDS = {
    "isbi2015_v4": "python experiments/isbi2015_cv.py --output-dir experiments/results/isbi2015_v4 "
                   "--architectures scn --grid-shape 192,160 --steps 4000 --rotation-degrees 8 "
                   "--scale-range 0.05 --local-crop-shape 96,96 --local-steps 4000",
    "isbi2015_v6": "python experiments/isbi2015_cv.py --output-dir experiments/results/isbi2015_v6 "
                   "--architectures scn --grid-shape 192,160 --steps 4000 --rotation-degrees 8 "
                   "--scale-range 0.05 --local-crop-shape 96,96 --local-steps 4000 "
                   "--ensemble-grid-shape 240,208 --ensemble-local-elastic-mm 3 --folds 2",
    "isbi2015_facing/fold0_global": "python experiments/isbi2015_facing.py --global "
                                    "experiments/results/isbi2015_v6/runs/scn_fold0 --fold 0 "
                                    "--dataset-root ../shared/data/isbi2015-train --output-dir "
                                    "experiments/results/isbi2015_facing/fold0_global",
    "isbi2015_facing/fold0_global_flip": "python experiments/isbi2015_facing.py --global "
                                         "experiments/results/isbi2015_v6/runs/scn_flip_fold0 "
                                         "--fold 0 --dataset-root ../shared/data/isbi2015-train "
                                         "--output-dir "
                                         "experiments/results/isbi2015_facing/fold0_global_flip",
    "isbi2015_facing/fold0_c2f": "python experiments/isbi2015_facing.py --global "
                                 "experiments/results/isbi2015_v6/runs/scn_fold0 --refine "
                                 "experiments/results/isbi2015_v6/runs/local_unet_fold0 --fold 0 "
                                 "--dataset-root ../shared/data/isbi2015-train --output-dir "
                                 "experiments/results/isbi2015_facing/fold0_c2f",
    "isbi2015_facing/fold0_c2f_flip": "python experiments/isbi2015_facing.py --global "
                                      "experiments/results/isbi2015_v6/runs/scn_flip_fold0 "
                                      "--refine "
                                      "experiments/results/isbi2015_v6/runs/local_unet_flip_fold0 "
                                      "--fold 0 --dataset-root ../shared/data/isbi2015-train "
                                      "--output-dir "
                                      "experiments/results/isbi2015_facing/fold0_c2f_flip",
    "isbi2015_facing/fold0_c2f_mixed": "python experiments/isbi2015_facing.py --global "
                                       "experiments/results/isbi2015_v6/runs/scn_fold0,"
                                       "experiments/results/isbi2015_v6/runs/scn_flip_fold0 "
                                       "--refine "
                                       "experiments/results/isbi2015_v6/runs/local_unet_fold0,"
                                       "experiments/results/isbi2015_v6/runs/local_unet_flip_fold0 "
                                       "--fold 0 --dataset-root ../shared/data/isbi2015-train "
                                       "--output-dir "
                                       "experiments/results/isbi2015_facing/fold0_c2f_mixed",
    "isbi2015_facing/fold1_global": "python experiments/isbi2015_facing.py --global "
                                    "experiments/results/isbi2015_v6/runs/scn_fold1 --fold 1 "
                                    "--dataset-root ../shared/data/isbi2015-train --output-dir "
                                    "experiments/results/isbi2015_facing/fold1_global",
    "isbi2015_facing/fold1_c2f": "python experiments/isbi2015_facing.py --global "
                                 "experiments/results/isbi2015_v6/runs/scn_fold1 --refine "
                                 "experiments/results/isbi2015_v6/runs/local_unet_fold1 --fold 1 "
                                 "--dataset-root ../shared/data/isbi2015-train --output-dir "
                                 "experiments/results/isbi2015_facing/fold1_c2f",
    "isbi2015_facing/fold1_c2f_retrained": "python experiments/isbi2015_facing.py --global "
                                           "experiments/results/isbi2015_v6/runs/scn_fold1 "
                                           "--refine experiments/results/isbi2015_v6/runs/"
                                           "local_unet_fold1 --fold 1 --dataset-root "
                                           "../shared/data/isbi2015-train --output-dir "
                                           "experiments/results/isbi2015_facing/"
                                           "fold1_c2f_retrained",
    "isbi2015_facing/fold1_c2f_flip": "python experiments/isbi2015_facing.py --global "
                                      "experiments/results/isbi2015_v6/runs/scn_flip_fold1 "
                                      "--refine experiments/results/isbi2015_v6/runs/"
                                      "local_unet_flip_fold1 --fold 1 --dataset-root "
                                      "../shared/data/isbi2015-train --output-dir "
                                      "experiments/results/isbi2015_facing/fold1_c2f_flip",
    "isbi2015_flag/fold0": "python experiments/isbi2015_flag.py --global "
                           "experiments/results/isbi2015_v6/runs/scn_fold0 --refine "
                           "experiments/results/isbi2015_v6/runs/local_unet_fold0 --fold 0 "
                           "--dataset-root ../shared/data/isbi2015-train --output-dir "
                           "experiments/results/isbi2015_flag/fold0 --second-pair "
                           "experiments/results/isbi2015_v6/runs/scn_flip_fold0,"
                           "experiments/results/isbi2015_v6/runs/local_unet_flip_fold0 "
                           "--test-time",
    "isbi2015_flag/folds01": "python experiments/isbi2015_flag.py --global "
                             "'experiments/results/isbi2015_v6/runs/scn_fold{fold}' --refine "
                             "'experiments/results/isbi2015_v6/runs/local_unet_fold{fold}' "
                             "--fold 0,1 --dataset-root ../shared/data/isbi2015-train "
                             "--output-dir experiments/results/isbi2015_flag/folds01 --test-time",
    "isbi2015_flag/fold1": "python experiments/isbi2015_flag.py --global "
                           "experiments/results/isbi2015_v6/runs/scn_fold1 --refine "
                           "experiments/results/isbi2015_v6/runs/local_unet_fold1 --fold 1 "
                           "--dataset-root ../shared/data/isbi2015-train --output-dir "
                           "experiments/results/isbi2015_flag/fold1 --test-time",
    "isbi2015_annotators/fold0": "python experiments/isbi2015_annotators.py --fold 0 --config "
                                 "'trained on the senior labels' "
                                 "experiments/results/isbi2015_v6/runs/scn_fold0 "
                                 "experiments/results/isbi2015_v6/runs/local_unet_fold0 "
                                 "--dataset-root ../shared/data/isbi2015-train --output-dir "
                                 "experiments/results/isbi2015_annotators/fold0",
    "isbi2015_annotators/fold1": "python experiments/isbi2015_annotators.py --fold 1 --config "
                                 "'trained on the senior labels' "
                                 "experiments/results/isbi2015_v6/runs/scn_fold1 "
                                 "experiments/results/isbi2015_v6/runs/local_unet_fold1 "
                                 "--dataset-root ../shared/data/isbi2015-train --output-dir "
                                 "experiments/results/isbi2015_annotators/fold1",
    "isbi2015_queue": "python experiments/isbi2015_queue.py status --output-dir "
                      "experiments/results/isbi2015_queue",
    "isbi2015_records": "python experiments/isbi2015_records.py table",
    "isbi2015_flag_signals": "python experiments/isbi2015_flag_signals.py --output-dir "
                             "experiments/results/isbi2015_flag_signals",
    "isbi2015_flag_signals_ensemble": "python experiments/isbi2015_flag_signals.py "
                                      "--configuration ensemble --output-dir "
                                      "experiments/results/isbi2015_flag_signals_ensemble",
}
#: Benchmark outputs (`python benchmarks/<name>.py --output .../benchmarks/<name>.md`).
BENCHMARKS = (
    ("bench_training", "P1: training step with on-device augmentation and rendering vs the "
     "same step on pre-made tensors"),
    ("bench_device_stage", "P2/P3: device stage vs SimpleITK + NumPy per sample; heatmap "
     "rendering vs writing a tensor of the same size"),
    ("bench_models", "Model throughput (GFLOP/s) against a large matmul, float32 and bfloat16"),
    ("bench_predict", "P5: prediction latency of one 1935x2400 ISBI cephalogram, by part"),
)
PLOT = re.compile(r"([A-Za-z0-9_.-]+\.png)")


def benchmark_block(results_dir):
    """The docs/benchmarks.md text of the benchmark outputs found in `results_dir/benchmarks`."""
    parts = []
    for name, title in BENCHMARKS:
        path = os.path.join(results_dir, "benchmarks", f"{name}.md")
        command = f"python benchmarks/{name}.py --output experiments/results/benchmarks/{name}.md"
        if not os.path.isfile(path):
            parts.append(f"{title}: *not run yet* (`{command}`).")
            continue
        with open(path, encoding="utf-8") as handle:
            parts.append(f"{title} (`{command}`):\n\n{handle.read().strip()}")
    return "\n\n".join(parts)


def block(results_dir, name, page_folder=""):
    """The page text for one experiment: its table.md, adapted, or a 'not run' line.
    `page_folder`: the folder of the page within the site (e.g. "results"), which plot links
    are relative to."""
    if name == "benchmarks":
        return benchmark_block(results_dir)
    folder = os.path.join(results_dir, name)
    path = os.path.join(folder, "table.md")
    if not os.path.isfile(path):
        command = COMMANDS.get(name, f"python experiments/{name}.py")
        return (f"*Not run yet: `{command}` writes "
                f"`experiments/results/{name}/table.md`.*")
    with open(path, encoding="utf-8") as handle:
        text = handle.read().strip()
    lines = []
    for line in text.splitlines():
        if line.startswith("# "):
            continue  # The page section has its own heading.
        if line.startswith("#"):
            line = "###" + line
        relative = os.path.relpath(folder, REPO)

        def link(match):
            target = os.path.join(folder, match.group(1))
            if not os.path.isfile(target):
                return match.group(1)
            target = posixpath.relpath(f"{relative}/{match.group(1)}", page_folder or ".")
            return f"\n\n![{match.group(1)}]({target})\n"

        if "|" not in line:
            line = PLOT.sub(link, line)
        lines.append(line)
    return "\n".join(lines).strip()


def publish(pages, results_dir, names=EXPERIMENTS):
    """Replaces every marked block of the pages by the generated tables.

    Args:
        pages: dict of the page's path within the site (e.g. "results/isbi2015.md") -> text.
        results_dir: the folder of the experiments' outputs (`experiments/results`).
        names: the experiments to publish; each must be marked on some page.

    Returns:
        dict of the same pages -> updated text.

    Raises:
        ValueError: an experiment is marked on no page, or its end marker is missing.
    """
    pages = dict(pages)
    for name in names:
        begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        marked = [page for page, text in pages.items() if begin in text]
        if not marked:
            raise ValueError(f"no page has the markers {begin} ... {end}")
        for page in marked:
            if end not in pages[page]:
                raise ValueError(f"{page} has {begin} but not {end}")
            head, rest = pages[page].split(begin, 1)
            _, tail = rest.split(end, 1)
            text = block(results_dir, name, posixpath.dirname(page))
            pages[page] = f"{head}{begin}\n{text}\n{end}{tail}"
    return pages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs-dir", default=os.path.join(REPO, "docs"),
                        help="the documentation's source folder (default: docs/)")
    parser.add_argument("--results-dir", default=os.path.join(REPO, "experiments", "results"))
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.docs_dir, "**", "*.md"), recursive=True))
    pages = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            pages[os.path.relpath(path, args.docs_dir).replace(os.sep, "/")] = handle.read()
    try:
        updated = publish(pages, args.results_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for page, text in updated.items():
        if text == pages[page]:
            continue
        path = os.path.join(args.docs_dir, page)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
        print(f"updated {path}")
    if updated == pages:
        print(f"{args.docs_dir}: every result page already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
