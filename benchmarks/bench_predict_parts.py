"""Where the shipped model's prediction time goes, op by op: the normalisation, the resampling onto
each stage's grid, each network, heatmap decoding, spread and the global second peak, crop extraction - each compiled
alone and timed (median over 5 images or repeats after one warm-up). Networks are built from the
spec with random weights (compute time does not depend on the values). Not a test.

    python benchmarks/bench_predict_parts.py --images ../shared/data/isbi2015-train/images
"""
import argparse
import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keraslm.io import read_image  # noqa: E402
from keraslm.models import build_model  # noqa: E402
from keraslm.ops.augmentation import extract_crops  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import SavedModelPredictor  # noqa: E402
from keraslm.preprocessing import normalize, prepare_on_grid  # noqa: E402

from bench_predict import _median_seconds  # noqa: E402 - the sibling benchmark's timer


def timeit(label, function, items):
    """Prints the median seconds of `function` over `items` after one warm-up call."""
    print(f"{label:<50} {_median_seconds(function, items)[0]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of ISBI 2015 JPEGs")
    parser.add_argument("--model", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "saved_models", "isbi2015_scn", "8"))
    args = parser.parse_args()
    print(describe_machine())
    spec = SavedModelPredictor(args.model).spec
    paths = sorted(glob.glob(os.path.join(args.images, "*.jpg")))[:6]
    arrays = [tf.constant(read_image(path, spacing=0.1).array) for path in paths]
    spacing = tf.constant([0.1, 0.1], tf.float64)
    normalized = tf.function(lambda array: normalize(array, "equalize_standardize"))
    timeit("normalize (equalize_standardize)", normalized, arrays)
    normalized_arrays = [normalized(array) for array in arrays]
    for stage in list(spec.global_stages) + list(spec.local_stages):
        resample = tf.function(
            lambda array, grid=stage.grid: prepare_on_grid(array, spacing, grid, "none")[0])
        timeit(f"resample to {stage.grid.shape} at {stage.grid.spacing[0]:.2f}", resample,
               normalized_arrays)
    for stage in list(spec.global_stages) + list(spec.local_stages):
        network = build_model(stage.architecture, 2, spec.num_landmarks, preset="small")
        if stage.crop_shape is None:
            inputs, what = tf.random.normal((1, *stage.grid.shape, 1)), f"global {stage.grid.shape}"
        else:
            inputs = tf.random.normal((spec.num_landmarks, *stage.crop_shape, 1))
            what = f"local {spec.num_landmarks} x {stage.crop_shape}"
        forward = tf.function(lambda x, network=network: network(x, training=False))
        timeit(f"{what} {stage.architecture}", forward, [inputs] * 6)
        heatmaps = forward(inputs)
        decode = tf.function(lambda h, stage=stage: stage.codec.decode(h, method=stage.decode_method))
        timeit(f"  decode {stage.decode_method}", decode, [heatmaps] * 6)
        spread = tf.function(lambda h, stage=stage: stage.codec.spread(h, stage.grid_spacing))
        timeit("  spread", spread, [heatmaps] * 6)
        if stage.crop_shape is None:
            peak = tf.function(lambda h, stage=stage: stage.codec.second_peak(
                h, stage.grid_spacing, stage.second_peak_radius_mm))
            timeit("  second peak", peak, [heatmaps] * 6)
        if stage.crop_shape is not None:
            fine = tf.random.normal((1, *stage.grid.shape, 1))
            centres = tf.random.uniform((1, spec.num_landmarks, 2), 100, 400)
            crops = tf.function(lambda a, stage=stage: extract_crops(a, centres, stage.crop_shape))
            timeit("  extract crops", crops, [fine] * 6)


if __name__ == "__main__":
    main()
