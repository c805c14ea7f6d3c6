"""Benchmark the on-device stage (augment + render) of keraslm training. Not a test.

P2: `keraslm.ops.device_stage` (sample transforms, trilinear/bilinear resampling with B-spline
    elastic deformation, exact landmark inverse, heatmap rendering), batched and compiled with
    XLA, per sample - versus the authors' approach, per sample on the CPU with SimpleITK:
    `sitk.Resample` through a CompositeTransform (AffineTransform after a BSplineTransform),
    landmarks moved by fixed-point inversion with `TransformPoint`, and NumPy Gaussian heatmaps
    rendered per landmark (within 4 sigma of the centre). Both sides use the same transforms;
    their resampled images are compared as a cross-check of the conventions.
P3: heatmap rendering (`HeatmapCodec.encode`, compiled) versus writing a tensor of the same
    size (`keras.ops.ones`, compiled): ratio.

SimpleITK is needed only for the SimpleITK column of P2 and is not a keraslm dependency:
    /work/venv/bin/pip install SimpleITK
Without it that column is skipped with a message.

Run: /work/venv/bin/python benchmarks/bench_device_stage.py   (about 2-3 minutes on 2 cores)
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keraslm.ops import (  # noqa: E402
    AugmentationConfig,
    HeatmapCodec,
    apply_to_images,
    apply_to_points,
    device_stage,
    sample_transforms,
)

try:
    import SimpleITK as sitk
except ImportError:  # the benchmark's only optional dependency
    sitk = None

CASES = [
    # name, grid shape (array order), spacing (x, y[, z]) mm, landmarks, batch
    ("2D 256x256", (256, 256), (1.0, 1.0), 37, 8),
    ("3D 128x128x64", (64, 128, 128), (1.0, 1.0, 2.0), 28, 2),
]
CONFIG = AugmentationConfig(rotation_degrees=30.0, translation_mm=10.0, scale=0.1,
                            axis_scale=0.05, elastic_mm=5.0, elastic_grid_points=6,
                            intensity_scale=0.1, intensity_shift=0.1)
SIGMA = 2.0


def timed(fn, repeats):
    """Median wall time of `fn()` in seconds after one warm-up call (compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def make_batch(shape, num_landmarks, batch, rng):
    """A smooth random image batch and landmarks in the central part of the grid."""
    images = rng.normal(size=(batch, *shape, 1)).astype(np.float32)
    sizes = np.array(shape[::-1], np.float32)
    points = (0.2 + 0.6 * rng.uniform(size=(batch, num_landmarks, len(shape)))) * (sizes - 1)
    return images, points.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The authors' approach: SimpleITK per sample
# ---------------------------------------------------------------------------------------------


def sitk_transform(transforms, b, shape, spacing):
    """The sample's sampling map as SimpleITK transforms in physical space (origin 0,
    identity direction: physical = index * spacing)."""
    ndim = len(shape)
    matrix = transforms["matrix"].numpy()[b].astype(np.float64)
    s = np.asarray(spacing, np.float64)
    linear = np.diag(s) @ matrix[:ndim, :ndim] @ np.diag(1 / s)
    affine = sitk.AffineTransform(ndim)
    affine.SetMatrix(linear.ravel().tolist())
    affine.SetTranslation((s * matrix[:ndim, ndim]).tolist())
    control = transforms["elastic"].numpy()[b].astype(np.float64) * s  # mm, (..., ndim)
    # keraslm adds u(p) after the affine map: A p + u(p) = A (p + A^-1 u(p)).
    control = control @ np.linalg.inv(linear).T
    reference = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkFloat32)
    reference.SetSpacing(tuple(float(v) for v in s))
    # keraslm's mesh spans the pixel centres (SimpleITK's BSplineTransformInitializer would
    # extend it slightly beyond the pixel edges), so set the domain explicitly.
    bspline = sitk.BSplineTransform(ndim, 3)
    bspline.SetTransformDomainOrigin([0.0] * ndim)
    bspline.SetTransformDomainPhysicalDimensions((s * (np.array(shape[::-1]) - 1)).tolist())
    bspline.SetTransformDomainMeshSize([control.shape[0] - 3] * ndim)
    params = np.concatenate([control[..., c].ravel() for c in range(ndim)])
    bspline.SetParameters(params.tolist())
    composite = sitk.CompositeTransform([affine, bspline])  # bspline applied first
    return composite, reference, affine


def sitk_sample(image, points, transforms, b, shape, spacing, codec):
    """Augment one sample and render its heatmaps the way the authors' CPU pipeline does."""
    composite, reference, affine = sitk_transform(transforms, b, shape, spacing)
    moving = sitk.GetImageFromArray(image[..., 0])
    moving.SetSpacing(reference.GetSpacing())
    out = sitk.Resample(moving, reference, composite, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out = sitk.GetArrayFromImage(out) * float(transforms["intensity_scale"][b]) + float(
        transforms["intensity_shift"][b])
    # Landmarks: fixed-point inversion q <- A^-1 (p - u(q)) of the composite, one landmark and
    # one TransformPoint at a time (u(q) = composite(q) - affine(q)).
    inverse_affine = affine.GetInverse()
    s = np.asarray(spacing, np.float64)
    moved = []
    for p in points.astype(np.float64) * s:
        q = np.array(inverse_affine.TransformPoint(p.tolist()))
        for _ in range(20):
            u = np.subtract(composite.TransformPoint(q.tolist()), affine.TransformPoint(q.tolist()))
            q = np.array(inverse_affine.TransformPoint((p - u).tolist()))
        moved.append(q / s)
    # NumPy rendering, one landmark at a time within 4 sigma.
    heatmaps = np.zeros((*codec.output_shape, len(moved)), np.float32)
    reach = int(np.ceil(4 * SIGMA))
    for l, centre in enumerate(moved):
        window = []
        for axis, n in enumerate(codec.output_shape):
            c = centre[len(shape) - 1 - axis]
            lo, hi = max(int(np.floor(c)) - reach, 0), min(int(np.ceil(c)) + reach + 1, n)
            window.append(np.arange(lo, hi))
        if any(len(w) == 0 for w in window):
            continue
        grids = np.meshgrid(*window, indexing="ij")
        d2 = sum((g - centre[len(shape) - 1 - a]) ** 2 for a, g in enumerate(grids))
        heatmaps[np.ix_(*window) + (l,)] = np.exp(-d2 / (2 * SIGMA ** 2))
    return out, np.array(moved), heatmaps


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per measurement")
    parser.add_argument("--output", help="also write what is printed to this file (Markdown), "
                        "e.g. experiments/results/benchmarks/bench_device_stage.md for experiments/publish.py")
    args = parser.parse_args()
    lines = []

    def say(*parts, **kwargs):
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        lines.append(text)
    rng = np.random.default_rng(0)
    say(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
          f"{[d.device_type for d in tf.config.list_logical_devices()]}, "
          f"CPU cores: {os.cpu_count()}")
    if sitk is None:
        say("SimpleITK is not installed: the SimpleITK column of P2 is skipped. It is needed "
              "only for this benchmark: /work/venv/bin/pip install SimpleITK")
    else:
        say(f"SimpleITK {sitk.Version.VersionString()} "
              f"({sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads)")
    say(f"augmentation: {CONFIG}\nheatmaps: sigma {SIGMA}, stride 1\n")

    p2_rows, p3_rows = [], []
    for name, shape, spacing, num_landmarks, batch in CASES:
        codec = HeatmapCodec(shape, stride=1, sigma=SIGMA)
        images, points = make_batch(shape, num_landmarks, batch, rng)
        generator = keras.random.SeedGenerator(1)

        @tf.function(jit_compile=True)
        def stage(x, p, generator=generator, codec=codec, shape=shape, spacing=spacing,
                  batch=batch):
            transforms = sample_transforms(generator, batch, shape, spacing, CONFIG)
            return device_stage(x, p, transforms, codec)

        x_tf, p_tf = tf.constant(images), tf.constant(points)
        device = timed(lambda: stage(x_tf, p_tf), args.repeats) / batch

        sitk_time, check = None, ""
        if sitk is not None:
            transforms = sample_transforms(5, batch, shape, spacing, CONFIG)
            augmented, heat, _ = device_stage(images, points, transforms, codec)
            start = time.perf_counter()
            results = [sitk_sample(images[b], points[b], transforms, b, shape, spacing, codec)
                       for b in range(batch)]
            sitk_time = (time.perf_counter() - start) / batch
            # Cross-check where all interpolation corners lie inside the image (at the edge of
            # the content ITK clamps to the border pixel, keraslm blends with the fill value).
            inner = apply_to_images(np.ones_like(images), transforms, intensity=False).numpy()
            inner = inner[..., 0] == 1.0
            ours = augmented.numpy()[..., 0][inner]
            theirs = np.stack([r[0] for r in results])[inner]
            moved = apply_to_points(points, transforms)[0].numpy()
            theirs_points = np.stack([r[1] for r in results])
            check = (f"image max|diff| {np.abs(ours - theirs).max():.1e}, "
                     f"points max|diff| {np.nanmax(np.abs(moved - theirs_points)):.1e} px, "
                     f"heatmaps max|diff| "
                     f"{np.abs(heat.numpy() - np.stack([r[2] for r in results])).max():.1e}")
        p2_rows.append((name, batch, device, sitk_time, check))

        out_shape = (batch, *codec.output_shape, num_landmarks)
        render = tf.function(lambda p, codec=codec: codec.encode(p), jit_compile=True)
        ones = tf.function(lambda p, shape=out_shape: keras.ops.ones(shape), jit_compile=True)
        t_render = timed(lambda: render(p_tf), args.repeats)
        t_ones = timed(lambda: ones(p_tf), args.repeats)
        p3_rows.append((name, out_shape, t_render, t_ones))

    say("P2: device stage (augment + render) per sample")
    say("| case | batch | keraslm XLA ms/sample | SimpleITK+NumPy ms/sample | speed-up |")
    say("|---|---|---|---|---|")
    for name, batch, device, sitk_time, _ in p2_rows:
        if sitk_time is None:
            say(f"| {name} | {batch} | {device * 1e3:.1f} | skipped (no SimpleITK) | - |")
        else:
            say(f"| {name} | {batch} | {device * 1e3:.1f} | {sitk_time * 1e3:.1f} | "
                  f"{sitk_time / device:.1f}x |")
    for name, *_, check in p2_rows:
        if check:
            say(f"  cross-check {name}: {check}")
    say("\nP3: heatmap rendering vs writing a tensor of the same size (both XLA-compiled)")
    say("| case | heatmap tensor | encode ms | ones ms | ratio |")
    say("|---|---|---|---|---|")
    for name, out_shape, t_render, t_ones in p3_rows:
        say(f"| {name} | {out_shape} | {t_render * 1e3:.1f} | {t_ones * 1e3:.1f} | "
              f"{t_render / t_ones:.2f} |")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".tmp", "w", encoding="utf-8") as handle:
            handle.write("```\n" + "\n".join(lines) + "\n```\n")
        os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
