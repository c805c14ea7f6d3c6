"""In-process prediction time per image of a SavedModel (ISBI images, 0.1 mm), after warm-up."""
import sys, time
import numpy as np
import keraslm
from keraslm.inference import load_predictor
path = sys.argv[1]
root = "/work/shared/data/isbi2015-train/images"
images = [f"{root}/{i:03d}.jpg" for i in range(1, 12)]
t = time.perf_counter(); predictor = load_predictor(path); load_s = time.perf_counter() - t
keraslm.predict(predictor, images[:1], spacing=0.1)  # warm-up (traces the graph)
times = []
for image in images[1:]:
    t = time.perf_counter(); p = keraslm.predict(predictor, [image], spacing=0.1)[0]; times.append(time.perf_counter() - t)
print(f"{path}: load {load_s:.1f} s; per image median {np.median(times):.3f} s, max {np.max(times):.3f} s over {len(times)} images (read + predict)")
print("expected_error_mm of 002:", None if p.expected_error_mm is None else np.round(p.expected_error_mm, 2).tolist())
