"""P1: cost of keraslm's input pipeline and device stage inside the training step.

Times training steps of a small 2D and a small 3D preset two ways, in one run:
  full     - HeatmapTrainer.fit on the tf.data pipeline: on-device augmentation (rotation,
             translation, scaling, elastic, intensity), heatmap rendering, weighted L2.
  baseline - the same network and optimiser, compiled the same way, fitted on one pre-made
             batch of images and target heatmaps held as tensors (no pipeline, no augmentation).
overhead = full / baseline - 1. Each case runs in every precision of --precisions (the network's
compute; variables, loss and targets stay float32), and the speed-up is the float32 full step
time over this precision's, measured in the same run.

    python benchmarks/bench_training.py [--steps 40] [--jit auto|on] [--cases 2d,3d]
                                        [--precisions float32,bfloat16]
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keraslm.models import build_model  # noqa: E402
from keraslm.precision import POLICIES, describe_machine, dtype_policy  # noqa: E402
from keraslm.ops.augmentation import AugmentationConfig  # noqa: E402
from keraslm.training.trainer import HeatmapTrainer, weighted_l2  # noqa: E402
from keraslm.training.pipeline import PreparedSamples, training_dataset  # noqa: E402
from keraslm.preprocessing import GridSpec  # noqa: E402

CASES = [
    # name, architecture, grid shape, landmarks, batch
    ("2D small SCN", "scn", (128, 128), 37, 8),
    ("3D small U-Net", "unet", (32, 64, 64), 28, 2),
]


class _Timer(keras.callbacks.Callback):
    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.times = warmup, []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def per_step(self):
        return float(np.median(self.times[self.warmup:]))


def _samples(grid_shape, num_landmarks, count, rng):
    ndim = len(grid_shape)
    images = rng.normal(size=(count, *grid_shape, 1)).astype(np.float32)
    size = np.array(grid_shape[::-1], np.float32)
    points = (rng.uniform(0.2, 0.8, size=(count, num_landmarks, ndim)) * size).astype(np.float32)
    grid = GridSpec(grid_shape, 1.5)
    return PreparedSamples(tuple(map(str, range(count))), images, points, (), (), grid, "none")


def run_case(name, architecture, grid_shape, num_landmarks, batch, steps, whole_step_jit,
             precision="float32", warmup=5):
    rng = np.random.default_rng(0)
    samples = _samples(grid_shape, num_landmarks, 4 * batch, rng)
    ndim = len(grid_shape)
    augmentation = AugmentationConfig(rotation_degrees=15, translation_mm=10, scale=0.1,
                                      elastic_mm=3.0, elastic_grid_points=5)

    with dtype_policy(POLICIES[precision]):
        network = build_model(architecture, ndim, num_landmarks, preset="small")
        baseline_network = build_model(architecture, ndim, num_landmarks, preset="small")
    trainer = HeatmapTrainer(network, grid_shape, samples.grid.spacing, augmentation=augmentation,
                             heatmap_scale=100.0, jit_device_stage=True)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=whole_step_jit)
    timer = _Timer(warmup)
    trainer.fit(training_dataset(samples, batch), epochs=1, steps_per_epoch=steps + warmup,
                callbacks=[timer], verbose=0)
    full = timer.per_step()

    images = tf.constant(samples.images[:batch])
    targets = trainer.codec.encode(samples.points_grid[:batch])  # peak 100: the codec's amplitude
    weights = tf.ones((batch, num_landmarks))

    class Plain(keras.Model):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def call(self, x, training=False):
            return self.net(x, training=training)

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = weighted_l2(self.net(x, training=True), y, weights)
            grads = tape.gradient(loss, self.net.trainable_variables)
            self.optimizer.apply(grads, self.net.trainable_variables)
            return {"loss": loss}

    plain = Plain(baseline_network)
    plain.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=whole_step_jit)
    timer = _Timer(warmup)
    data = tf.data.Dataset.from_tensors((images, targets)).repeat()
    plain.fit(data, epochs=1, steps_per_epoch=steps + warmup, callbacks=[timer], verbose=0)
    baseline = timer.per_step()
    return name, full, baseline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per case (after 5 warm-up steps)")
    parser.add_argument("--jit", default="auto", choices=["auto", "on"],
                        help="on: XLA for the whole step (both sides); auto: as train.py on a CPU, "
                        "XLA for the device stage only, the network and the baseline without XLA")
    parser.add_argument("--cases", default="2d,3d", help="comma-separated: 2d, 3d")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="comma-separated: float32, bfloat16, float16")
    parser.add_argument("--output", help="also write what is printed to this file (Markdown), "
                        "e.g. experiments/results/benchmarks/bench_training.md for experiments/publish.py")
    args = parser.parse_args()
    lines = []

    def say(*parts, **kwargs):
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        lines.append(text)
    say(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
          f"{[d.device_type for d in tf.config.list_physical_devices()]}")
    say(describe_machine())
    say(f"jit mode: {args.jit}")
    say(f"{'case':<16} {'batch':>5} {'precision':>9} {'full s/step':>12} {'baseline s/step':>16} "
        f"{'overhead':>9} {'speed-up':>9}")
    wanted = args.cases.lower().split(",")
    precisions = args.precisions.lower().split(",")
    for name, architecture, grid_shape, landmarks, batch in CASES:
        if f"{len(grid_shape)}d" not in wanted:
            continue
        reference = None
        for precision in precisions:
            _, full, baseline = run_case(name, architecture, grid_shape, landmarks, batch,
                                         args.steps, whole_step_jit=args.jit == "on",
                                         precision=precision)
            reference = reference or full
            say(f"{name:<16} {batch:>5} {precision:>9} {full:>12.4f} {baseline:>16.4f} "
                f"{100 * (full / baseline - 1):>8.1f}% {reference / full:>8.2f}x")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".tmp", "w", encoding="utf-8") as handle:
            handle.write("```\n" + "\n".join(lines) + "\n```\n")
        os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
