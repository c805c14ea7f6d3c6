"""Time forward and forward+backward of every `small` preset network on this machine.

Not a test. Prints, per architecture and dimension, the milliseconds per batch and the achieved
GFLOP/s, next to the GFLOP/s of a large `tf.linalg.matmul` measured in the same run (an upper
bound for what convolutions can reach here). Convolution FLOPs come from
`keraslm.models.summary.conv_flops`; forward+backward is counted as 3 x forward (one pass for
the outputs, two for the gradients of inputs and weights).

Every network runs in each precision of --precisions (float32 and bfloat16 by default: the
network's compute; variables stay float32), and the matmul rate is measured in each precision too,
so the "% matmul" column compares like with like; "speed-up" is the float32 forward+backward time
over this precision's, measured in the same run.

Usage: python benchmarks/bench_models.py [--batch 1] [--min-seconds 2] [--jit-compile]
                                         [--precisions float32,bfloat16]
"""
import argparse
import os
import time

import numpy as np
import tensorflow as tf

from keraslm.models import ARCHITECTURES, build_model
from keraslm.models.summary import NUM_LANDMARKS, conv_flops, input_size
from keraslm.precision import POLICIES, describe_machine, dtype_policy


def seconds_per_call(fn, min_seconds):
    """Median wall time of `fn()` after two warm-up calls, repeated for about `min_seconds`."""
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_gflops(n, min_seconds, dtype="float32"):
    """GFLOP/s of an n x n `tf.linalg.matmul` in `dtype`."""
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    seconds = seconds_per_call(lambda: matmul().numpy(), min_seconds)
    return 2 * n**3 / seconds / 1e9


def bench_model(architecture, ndim, batch, min_seconds, jit_compile, precision="float32"):
    """Forward and forward+backward timings of one small-preset network."""
    size = input_size("small", ndim, architecture)
    with dtype_policy(POLICIES[precision]):
        model = build_model(architecture, ndim, NUM_LANDMARKS[ndim], preset="small",
                            input_shape=(*size, 1))
    flops = conv_flops(model) * batch
    x = tf.random.normal((batch, *size, 1))

    @tf.function(jit_compile=jit_compile)
    def forward():
        return model(x, training=False)

    @tf.function(jit_compile=jit_compile)
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(model(x, training=True), "float32")))
        return tape.gradient(loss, model.trainable_variables)

    fwd = seconds_per_call(lambda: forward().numpy(), min_seconds)
    both = seconds_per_call(lambda: [g.numpy() for g in forward_backward()], min_seconds)
    return size, flops, fwd, both


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="images per batch")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="minimum measuring time per figure")
    parser.add_argument("--jit-compile", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="comma-separated: float32, bfloat16, float16")
    parser.add_argument("--output", help="also write what is printed to this file (Markdown), "
                        "e.g. experiments/results/benchmarks/bench_models.md for experiments/publish.py")
    args = parser.parse_args()
    lines = []

    def say(*parts, **kwargs):
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        lines.append(text)

    precisions = args.precisions.lower().split(",")
    dtypes = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
    peaks = {p: matmul_gflops(2048, args.min_seconds, dtypes[p]) for p in precisions}
    say(f"{describe_machine()}, TensorFlow {tf.__version__}, batch {args.batch}, "
        f"XLA {'on' if args.jit_compile else 'off'}")
    for precision in precisions:
        say(f"tf.linalg.matmul 2048x2048 {precision}: {peaks[precision]:.1f} GFLOP/s")
    say(f"{'network':<16}{'input':>10}{'precision':>10}{'GFLOP fwd':>11}{'fwd ms':>9}{'GFLOP/s':>9}"
        f"{'fwd+bwd ms':>12}{'GFLOP/s':>9}{'% matmul':>10}{'speed-up':>10}")
    for ndim in (2, 3):
        for architecture in ARCHITECTURES:
            reference = None
            for precision in precisions:
                size, flops, fwd, both = bench_model(architecture, ndim, args.batch,
                                                     args.min_seconds, args.jit_compile, precision)
                reference = reference or both
                rate_fwd = flops / fwd / 1e9
                rate_both = 3 * flops / both / 1e9
                say(f"{architecture + f' {ndim}D':<16}{'x'.join(map(str, size)):>10}{precision:>10}"
                    f"{flops / 1e9:>11.2f}{fwd * 1e3:>9.1f}{rate_fwd:>9.1f}"
                    f"{both * 1e3:>12.1f}{rate_both:>9.1f}{100 * rate_both / peaks[precision]:>9.0f}%"
                    f"{reference / both:>9.2f}x")
    for precision in precisions:
        say(f"tf.linalg.matmul 2048x2048 {precision} again: "
            f"{matmul_gflops(2048, args.min_seconds, dtypes[precision]):.1f} GFLOP/s")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".tmp", "w", encoding="utf-8") as handle:
            handle.write("```\n" + "\n".join(lines) + "\n```\n")
        os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
