"""Issue 13 dev: DARK vs quadratic decoding for A's fold-0 cascade (no training)."""
import numpy as np
from keraslm.detector import load_detector
from keraslm.evaluation.sources import run_test_set
from keraslm.inference import load_predictor, predict
R = "/work/runs13"
test = run_test_set(f"{R}/a_global_f0")
images = [test.read_image(test.record(i)) for i in test.ids]
g = load_detector(f"{R}/a_global_f0/model.keras"); l = load_detector(f"{R}/a_local_f0/model.keras")
for gm_method, lm_method in (("quadratic", "quadratic"), ("quadratic", "dark"), ("dark", "dark")):
    coarse = load_predictor(g.network, metadata=dict(g.metadata, decode_method=gm_method))
    local = load_predictor(l.network, metadata=dict(l.metadata, decode_method=lm_method))
    preds = predict(coarse, images, refine=local)
    err = np.linalg.norm(np.stack([p.points_mm for p in preds]) - test.points_mm, axis=-1)
    print(f"global {gm_method:9s} local {lm_method:9s}: MRE {err.mean():.3f} +- {err.std():.2f}, median {np.median(err):.3f}, "
          f"SDR@2 {100 * (err <= 2).mean():.1f} %, > 10 mm {(err > 10).sum()}", flush=True)
