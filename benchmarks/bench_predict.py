"""Prediction time of one ISBI 2015 cephalogram (1935x2400) with the shipped model, and where it
goes. Not a test.

Times, median over the images after one warm-up image (the machine should be otherwise idle):

  end to end      keraslm.predict on the shipped SavedModel (reading the JPEG included)
  predict_array   the SavedModel's array signature (no reading), and on the images mirrored
  read            keraslm.io.read_image alone
  global part     the same spec's global stages alone (preprocessing, networks, decoding),
                  as a Keras detector of the same architectures and presets (random weights:
                  compute time does not depend on the values; weight counts are checked)
  local part      the whole Keras detector minus its global part (fine-grid preparation,
                  crops, local networks, blend)

    python benchmarks/bench_predict.py --images ../shared/data/isbi2015-train/images --count 10
"""
import argparse
import glob
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keraslm.experiments.isbi2015 import mirrored_left_right  # noqa: E402
from keraslm.io import read_image  # noqa: E402
from keraslm.models import build_model  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import (DetectorPredictor, LandmarkDetector, SavedModelPredictor,  # noqa: E402
                                predict)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "saved_models", "isbi2015_scn", "8")


def _median_seconds(function, items):
    function(items[0])  # Warm-up (tracing, first-call allocations).
    times = []
    for item in items[1:]:
        start = time.perf_counter()
        function(item)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.max(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of ISBI 2015 JPEGs")
    parser.add_argument("--count", type=int, default=10, help="images timed (after one warm-up)")
    parser.add_argument("--model", default=SHIPPED, help="SavedModel version folder")
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.images, "*.jpg")))[:args.count + 1]
    print(describe_machine())
    start = time.perf_counter()
    saved = SavedModelPredictor(args.model)
    print(f"load SavedModel: {time.perf_counter() - start:.2f} s")
    spec = saved.spec

    def networks(stages):
        return [build_model(s.architecture, spec.ndim, spec.num_landmarks, preset="small")
                for s in stages]

    # Random weights are unsure of every image: without the mirror check, which they would
    # trigger every time (the SavedModel rows show what the check costs).
    keras_spec = spec.replace(mirror_check=None)
    full = LandmarkDetector(keras_spec, networks(spec.global_stages), networks(spec.local_stages))
    count = sum(int(np.prod(v.shape)) for v in saved._loaded.signatures["predict_array"].variables)
    keras_count = sum(int(np.prod(w.shape)) for w in full.weights)
    print(f"weights: SavedModel {count}, Keras detector {keras_count}"
          + ("" if count == keras_count else "  (DIFFER: the part timings are approximate)"))
    global_only = LandmarkDetector(keras_spec.replace(local_stages=(), calibration=None),
                                   full.networks)
    images = [read_image(path, spacing=0.1) for path in paths]
    rows = [
        ("end to end (keraslm.predict, SavedModel)",
         _median_seconds(lambda path: predict(saved, [path], spacing=0.1), paths)),
        ("read (keraslm.io.read_image)",
         _median_seconds(lambda path: read_image(path, spacing=0.1), paths)),
        ("SavedModel predict_array (no reading)",
         _median_seconds(saved.locate, images)),
        ("  the same, images mirrored left-right",
         _median_seconds(saved.locate, [mirrored_left_right(image) for image in images])),
    ]
    whole = _median_seconds(DetectorPredictor(full).locate, images)
    part = _median_seconds(DetectorPredictor(global_only).locate, images)
    rows += [(f"Keras detector, {len(spec.global_stages)} global + {len(spec.local_stages)} local stages", whole),
             ("  global part", part),
             ("  local part (difference)", (whole[0] - part[0], float("nan")))]
    print(f"{len(paths) - 1} images after one warm-up; median / max seconds per image")
    for label, (median, largest) in rows:
        print(f"  {label:<48} {median:6.3f}  {largest:6.3f}")


if __name__ == "__main__":
    main()
