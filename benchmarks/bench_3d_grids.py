"""3D training at three grids within one time budget: point error vs the mean-position
baseline after 2, 5, 10 ... minutes. Not a test.

For each grid (coarse, the plan's default, fine) of the 3D phantom, one run with the default
training preset validates every `--steps-per-epoch` steps and stops when the budget is spent
(the time counts training and its validations, not the image preparation before them). The
table gives, per grid, the validation point error (the trainer's grid-level decoding) of the
last validation at or before each mark, beside the mean-position baseline (each landmark at its
mean training position) on the same images, and the loss per validation. The machine should be
otherwise idle.

    python benchmarks/bench_3d_grids.py --minutes 5 --marks 2,5 --output-dir /tmp/bench_3d_grids

`--phantom-spacing 1` trains on the 3D phantom generated at 1 mm voxels instead (the same
160 x 211 x 96 mm hands, 160 x 211 x 96 voxels: the size of a real scan); `--plot` draws each
run's loss and validation error against the training time.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keraslm.training.run as run_module  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.training import TrainingConfig, train  # noqa: E402

GRIDS = {"coarse": {"grid_spacing": 6.0}, "plan": {}, "fine": {"grid_spacing": 2.0}}


class TimeBudget(keras.callbacks.Callback):
    """Records the seconds at every epoch end and stops training once `seconds` are spent."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.epoch_seconds = seconds, []

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self.start)
        if self.epoch_seconds[-1] >= self.seconds:
            self.model.stop_training = True


def plot_curves(rows, path, dataset):
    """Loss and validation error per validation against the training minutes, one line per
    run, the mean-position baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, error_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for row in rows:
        minutes = [s / 60 for s in row["epoch_seconds"]]
        label = f"{row['grid']} {'x'.join(map(str, row['shape']))} at {row['spacing_mm']:.2g} mm"
        loss_axes.plot(minutes, row["loss"], marker=".", label=label)
        line, = error_axes.plot(minutes, row["val_point_error_mm"], marker=".", label=label)
        error_axes.axhline(row["baseline_mean_mm"], color=line.get_color(), linestyle="--",
                           linewidth=1, label="mean-position baseline")
    loss_axes.set(xlabel="training minutes", ylabel="training loss", yscale="log",
                  title=os.path.basename(os.path.normpath(dataset)))
    error_axes.set(xlabel="training minutes", ylabel="validation mean point error (mm)")
    error_axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per grid")
    parser.add_argument("--marks", default="2,5", help="minutes at which to read the error")
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--output-dir", default="/tmp/bench_3d_grids")
    parser.add_argument("--dataset", default="phantom3d")
    parser.add_argument("--architecture", default="scn")
    parser.add_argument("--grids", default=",".join(GRIDS), help="which of " + ", ".join(GRIDS))
    parser.add_argument("--phantom-spacing", type=float,
                        help="generate the 3D phantom (40 volumes) at this voxel size in mm, "
                        "same physical size, into the output folder, and train on it")
    parser.add_argument("--plot", help="PNG of the loss and error curves")
    args = parser.parse_args()
    if args.phantom_spacing:
        from keraslm.datasets import make_phantom

        extent = (160.0, 211.2, 96.0)  # The default 3D phantom's field, mm.
        size = tuple(int(round(e / args.phantom_spacing)) for e in extent)
        args.dataset = os.path.join(args.output_dir, f"phantom3d_{args.phantom_spacing:g}mm")
        print(f"generating {args.dataset}: 40 volumes of {size} voxels", flush=True)
        make_phantom(args.dataset, ndim=3, num_images=40, image_size=size,
                     spacing=(args.phantom_spacing,) * 3)
    marks = [float(m) for m in args.marks.split(",")]
    print(describe_machine(), flush=True)
    fit = run_module._fit
    rows = []
    for name in args.grids.split(","):
        budget = TimeBudget(args.minutes * 60)

        def timed_fit(trainer, train_data, epochs, steps_per_epoch, val_samples, batch_size,
                      callbacks):
            fit(trainer, train_data, epochs, steps_per_epoch, val_samples, batch_size,
                callbacks + [budget])

        run_module._fit = timed_fit
        run_dir = os.path.join(args.output_dir, name.split()[0])
        result = train(TrainingConfig(
            dataset=args.dataset, architecture=args.architecture, plots=False, export_dir=None,
            steps=100000, steps_per_epoch=args.steps_per_epoch, output_dir=run_dir,
            **GRIDS[name]))
        config = json.load(open(os.path.join(run_dir, "config.json")))
        history = json.load(open(os.path.join(run_dir, "history.json")))
        row = {"grid": name, "shape": config["grid_shape"], "spacing_mm": config["grid_spacing"][0],
               "epoch_seconds": budget.epoch_seconds, "loss": history["loss"],
               "val_point_error_mm": history["val_point_error_mm"],
               "final_mean_mm": result.summary["mean_mm"],
               "baseline_mean_mm": result.baseline_summary["mean_mm"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    run_module._fit = fit
    if args.plot:
        plot_curves(rows, args.plot, args.dataset)
    print(f"\nvalidation mean point error (mm) after ... minutes; baseline = each landmark at its "
          f"mean training position, {args.dataset}, {args.architecture}")
    print(f"{'grid':<8} {'shape':<12} {'mm':>5} " + " ".join(f"{m:>6g} min" for m in marks)
          + f" {'final':>7} {'baseline':>9}  loss per validation")
    for row in rows:
        at = []
        for mark in marks:
            done = [i for i, s in enumerate(row["epoch_seconds"]) if s <= mark * 60 + 1e-6]
            at.append(f"{row['val_point_error_mm'][done[-1]]:>10.2f}" if done else f"{'-':>10}")
        print(f"{row['grid']:<8} {'x'.join(map(str, row['shape'])):<12} {row['spacing_mm']:>5.2f} "
              + " ".join(at) + f" {row['final_mean_mm']:>7.2f} {row['baseline_mean_mm']:>9.2f}  "
              + " ".join(f"{v:.3g}" for v in row["loss"]))


if __name__ == "__main__":
    main()
