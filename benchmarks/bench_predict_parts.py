"""Where the shipped model's prediction time goes, op by op: the normalisation, the resampling onto
each stage's grid, each network, heatmap decoding and spread, crop extraction - each compiled
alone and timed (median over 5 images or repeats after one warm-up). Networks are built from the
spec with random weights (compute time does not depend on the values). Not a test.

    python benchmarks/bench_predict_parts.py --images ../shared/data/isbi2015-train/images
"""
import argparse
import glob
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keraslm.io import read_image  # noqa: E402
from keraslm.models import build_model  # noqa: E402
from keraslm.ops.augmentation import extract_crops  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import SavedModelPredictor  # noqa: E402
from keraslm.preprocessing import normalize, prepare_on_grid  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--images", required=True, help="folder of ISBI 2015 JPEGs")
parser.add_argument("--model", default=os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "saved_models", "isbi2015_scn", "6"))
args = parser.parse_args()
print(describe_machine())
spec = SavedModelPredictor(args.model).spec
paths = sorted(glob.glob(os.path.join(args.images, "*.jpg")))[:6]
images = [read_image(p, spacing=0.1) for p in paths]

def timeit(label, fn, items):
    fn(items[0]); ts = []
    for it in items[1:]:
        t = time.perf_counter(); r = fn(it)
        if isinstance(r, (list, tuple)): [x.numpy() if hasattr(x, "numpy") else x for x in r]
        elif hasattr(r, "numpy"): r.numpy()
        ts.append(time.perf_counter() - t)
    print(f"{label:<50} {np.median(ts):.3f}")

arrays = [tf.constant(im.array) for im in images]
sp = tf.constant(np.asarray(images[0].spacing, float), tf.float64)
norm = tf.function(lambda a: normalize(a, "equalize_standardize"))
timeit("normalize (equalize_standardize)", norm, arrays)
normed = [norm(a) for a in arrays]
for st in list(spec.global_stages) + list(spec.local_stages):
    f = tf.function(lambda a, g=st.grid: prepare_on_grid(a, sp, g, "none")[0])
    timeit(f"resample to {st.grid.shape} at {st.grid.spacing[0]:.2f}", f, normed)
for st in spec.global_stages:
    net = build_model(st.architecture, 2, spec.num_landmarks, preset="small")
    x = tf.random.normal((1, *st.grid.shape, 1))
    f = tf.function(lambda x, n=net: n(x, training=False))
    timeit(f"global net {st.architecture} {st.grid.shape}", f, [x] * 6)
    dec = tf.function(lambda h, c=st.codec, s=st: c.decode(h, method=s.decode_method))
    h = f(x)
    timeit(f"  decode {st.decode_method}", dec, [h] * 6)
    spr = tf.function(lambda h, c=st.codec, s=st: c.spread(h, s.grid_spacing))
    timeit("  spread", spr, [h] * 6)
for st in spec.local_stages:
    net = build_model(st.architecture, 2, spec.num_landmarks, preset="small")
    x = tf.random.normal((19, *st.crop_shape, 1))
    f = tf.function(lambda x, n=net: n(x, training=False))
    timeit(f"local net {st.architecture} 19 x {st.crop_shape}", f, [x] * 6)
    h = f(x)
    dec = tf.function(lambda h, c=st.codec, s=st: c.decode(h, method=s.decode_method))
    timeit(f"  decode {st.decode_method} (19 x 19 channels)", dec, [h] * 6)
    spr = tf.function(lambda h, c=st.codec, s=st: c.spread(h, s.grid_spacing))
    timeit("  spread (19 x 19 channels)", spr, [h] * 6)
    fine = tf.random.normal((1, *st.grid.shape, 1))
    cen = tf.random.uniform((1, 19, 2), 100, 400)
    ex = tf.function(lambda a, c, s=st: extract_crops(a, c, s.crop_shape))
    timeit("  extract crops", lambda a: ex(a, cen), [fine] * 6)
