"""Copy the generated experiment tables into README.md's "Results" section (see --help).

Each experiment writes `experiments/results/<name>/table.md`; this script puts that file's text
between the README markers `<!-- results:<name> -->` and `<!-- /results:<name> -->`, so the
README shows exactly what the experiment generated (nothing typed by hand). Experiments that
have not been run leave a line saying so. Headings of the table files are demoted to fit under
the README's "Results" section, and plots the tables name are embedded as images (paths
relative to the repository root).
"""
import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = ("isbi2015_cv", "isbi2015_v4", "isbi2015_v6", "table1_phantom2d", "table2_phantom3d",
               "benchmarks")
#: The command that writes an experiment's table, where it is not `experiments/<name>.py`.
COMMANDS = {
    "isbi2015_v4": "python experiments/isbi2015_cv.py --output-dir experiments/results/isbi2015_v4 "
                   "--architectures scn --grid-shape 192,160 --steps 4000 --rotation-degrees 8 "
                   "--scale-range 0.05 --local-crop-shape 96,96 --local-steps 4000",
    "isbi2015_v6": "python experiments/isbi2015_cv.py --output-dir experiments/results/isbi2015_v6 "
                   "--architectures scn --grid-shape 192,160 --steps 4000 --rotation-degrees 8 "
                   "--scale-range 0.05 --local-crop-shape 96,96 --local-steps 4000 "
                   "--ensemble-grid-shape 240,208 --ensemble-local-elastic-mm 3 --folds 2",
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
    """The README text of the benchmark outputs found in `results_dir/benchmarks`."""
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


def block(results_dir, name):
    """The README text for one experiment: its table.md, adapted, or a 'not run' line."""
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
            continue  # The README section has its own heading.
        if line.startswith("#"):
            line = "###" + line
        relative = os.path.relpath(folder, REPO)

        def link(match):
            target = os.path.join(folder, match.group(1))
            if not os.path.isfile(target):
                return match.group(1)
            return f"\n\n![{match.group(1)}]({relative}/{match.group(1)})\n"

        if "|" not in line:
            line = PLOT.sub(link, line)
        lines.append(line)
    return "\n".join(lines).strip()


def publish(readme, results_dir, names=EXPERIMENTS):
    """Replaces every marked block of `readme` (text) by the generated tables; returns the text.

    Raises:
        ValueError: a marker pair is missing from the README.
    """
    for name in names:
        begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        if begin not in readme or end not in readme:
            raise ValueError(f"README has no {begin} ... {end} markers")
        head, rest = readme.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{begin}\n{block(results_dir, name)}\n{end}{tail}"
    return readme


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    parser.add_argument("--results-dir", default=os.path.join(REPO, "experiments", "results"))
    args = parser.parse_args(argv)
    with open(args.readme, encoding="utf-8") as handle:
        text = handle.read()
    try:
        updated = publish(text, args.results_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    temporary = args.readme + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(updated)
    os.replace(temporary, args.readme)
    print(f"updated {args.readme}" if updated != text else f"{args.readme} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
