"""P5: prediction latency of one ISBI 2015 cephalogram (1935x2400) with the shipped model layout.

Not a test. Times `keraslm.predict` in-process after warm-up on one image, end to end, and its
parts the way `keraslm.inference.predict` runs them:

  read/decode       keraslm.io.read_image (JPEG -> array with its geometry)
  global prep       normalisation (histogram equalisation) + resampling onto the global grid
  global network    network + decoding on the global grid
  local prep        the image onto the local stage's fine grid
  local network     19 crops around the global estimates + network + decoding
  map back          grid -> image index -> physical mm

Since keraslm.predict runs one TF graph per image (`keraslm.detector`), these parts are timed
by calling the same functions one at a time. Models: the shipped SavedModel
(`saved_models/isbi2015_scn/2`, float32; its `predict_image` signature is also timed end to end
on the JPEG's bytes; the part timings use version 1, whose grid-level signatures run stage by
stage), and
Keras networks of
the same architectures and presets (small SCN global, small U-Net local; their weight counts
are checked against the SavedModel's) in float32 and bfloat16 - compute time does not depend
on the weights' values, and the shipped model exists only as a SavedModel.

    python benchmarks/bench_predict.py --image ../shared/data/isbi2015-train/images/001.jpg
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keraslm.inference import CascadePredictor, KerasPredictor, load_predictor, predict  # noqa: E402
from keraslm.io import read_image  # noqa: E402
from keraslm.models import build_model  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.preprocessing import GridSpec  # noqa: E402
from keraslm.training.pipeline import prepare_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "saved_models", "isbi2015_scn", "2")
SHIPPED_V1 = os.path.join(REPO, "saved_models", "isbi2015_scn", "1")


def _median_seconds(function, repeats):
    function()  # Warm-up (tracing, first-call allocations).
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def keras_cascade(shipped, precision):
    """Keras predictors with the shipped model's architectures, metadata and weight counts."""
    meta = shipped.metadata
    local_meta = meta["refine"]
    count = len(meta["landmark_names"])
    global_network = build_model(meta["architecture"], 2, count, preset="small")
    local_network = build_model(local_meta["architecture"], 2, count, preset="small")
    saved = tf.saved_model.load(SHIPPED)
    variables = {id(v): v for name in ("landmarks", "refine") for v in saved.signatures[name].variables}
    exported = sum(int(np.prod(v.shape)) for v in variables.values())
    built = global_network.count_params() + local_network.count_params()
    if exported != built:
        raise SystemExit(f"the Keras stand-ins have {built} weights, the SavedModel {exported}")
    global_meta = {k: v for k, v in meta.items() if k != "refine"}
    return CascadePredictor(KerasPredictor(global_network, global_meta, precision),
                            KerasPredictor(local_network, local_meta, precision))


def breakdown(predictor, path, repeats):
    """Median seconds of each part of one prediction, and of keraslm.predict end to end."""
    meta = predictor.metadata
    grid = GridSpec(tuple(meta["grid_shape"]), tuple(meta["grid_spacing"]))
    fine_meta = predictor.local.metadata
    fine = GridSpec(tuple(fine_meta["grid_shape"]), tuple(fine_meta["grid_spacing"]))
    image = read_image(path, spacing=0.1)
    array, placement = prepare_image(image, grid, meta["normalization"])
    batch = array[np.newaxis, ..., np.newaxis]
    points, _ = predictor.grid_points(batch)
    points_index = placement.grid_to_image_index(points[0])
    fine_array, fine_placement = prepare_image(image, fine, fine_meta["normalization"])
    centres = fine_placement.image_index_to_grid(points_index)[np.newaxis].astype(np.float32)
    refined, _ = predictor.local.refine(fine_array[np.newaxis, ..., np.newaxis], centres)
    parts = {
        "read/decode": lambda: read_image(path, spacing=0.1),
        "global prep": lambda: prepare_image(image, grid, meta["normalization"]),
        "global network": lambda: predictor.grid_points(batch),
        "local prep": lambda: prepare_image(image, fine, fine_meta["normalization"]),
        "local network": lambda: predictor.local.refine(fine_array[np.newaxis, ..., np.newaxis], centres),
        "map back": lambda: image.index_to_physical(fine_placement.grid_to_image_index(refined[0])),
    }
    times = {name: _median_seconds(function, repeats) for name, function in parts.items()}
    times["keraslm.predict"] = _median_seconds(lambda: predict(predictor, [path], spacing=0.1), repeats)
    return times


def image_signature_seconds(path, repeats):
    """Median seconds of the shipped export's `predict_image` on the file's bytes (in-process)."""
    signature = tf.saved_model.load(SHIPPED).signatures["predict_image"]
    with open(path, "rb") as handle:
        data = tf.constant([handle.read()])
    spacing = tf.constant([[0.1, 0.1]])
    return _median_seconds(lambda: signature(image_bytes=data, spacing=spacing), repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.path.join(REPO, "..", "shared", "data", "isbi2015-train",
                                                        "images", "001.jpg"),
                        help="a 1935x2400 ISBI 2015 cephalogram")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median)")
    parser.add_argument("--output", help="also write what is printed to this file (Markdown), "
                        "e.g. experiments/results/benchmarks/bench_predict.md for experiments/publish.py")
    args = parser.parse_args()
    if not os.path.isfile(args.image):
        raise SystemExit(f"{args.image}: no such image (pass --image)")
    lines = []

    def say(text):
        print(text, flush=True)
        lines.append(text)

    shipped = load_predictor(SHIPPED_V1)  # Stage by stage: its parts can be timed alone.
    size = read_image(args.image, spacing=0.1).array.shape
    say(f"{describe_machine()}, TensorFlow {tf.__version__}")
    say(f"one image {os.path.basename(args.image)} ({size[1]}x{size[0]} pixels), median of "
        f"{args.repeats} after warm-up, seconds")
    columns = {
        "SavedModel v1 float32": shipped,
        "Keras float32": keras_cascade(shipped, "float32"),
        "Keras bfloat16": keras_cascade(shipped, "bfloat16"),
    }
    results = {name: breakdown(predictor, args.image, args.repeats) for name, predictor in columns.items()}
    image_seconds = image_signature_seconds(args.image, args.repeats)
    say("| part | " + " | ".join(columns) + " |")
    say("|---|" + "---|" * len(columns))
    for part in results["SavedModel v1 float32"]:
        say(f"| {part} | " + " | ".join(f"{results[name][part]:.3f}" for name in columns) + " |")
    say(f"SavedModel version 2, `predict_image` signature on the JPEG bytes (decode + everything "
        f"in the graph): {image_seconds:.3f} s")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".tmp", "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
