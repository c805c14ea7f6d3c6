"""Issue 13, session 8: how sensitive is a cascade to image appearance it was not trained on?
Fold 0's 30 held-out ISBI images, perturbed (gamma, contrast, blur, noise), predicted by the
given global + local runs; point errors in mm per condition. Usage:
python robustness_probe.py GLOBAL.keras LOCAL.keras OUT.json [--all]
(--all adds gamma and contrast, which histogram equalisation makes exactly invariant)"""
import dataclasses, json, sys, time
import numpy as np
from PIL import Image as PILImage, ImageFilter
from keraslm.data import select_split
from keraslm.datasets.isbi2015 import isbi2015
from keraslm.inference import load_predictor, predict
from keraslm.io import read_image

glob, local, out = sys.argv[1:4]
everything = "--all" in sys.argv[4:]
_, test = select_split(isbi2015("/work/shared/data/isbi2015-train"), fold=0, num_folds=5)
rng = np.random.default_rng(0)

def blur(a, sigma_px):
    return np.asarray(PILImage.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(sigma_px)), np.float32)

conditions = {
    "original": lambda a: a,
    "gamma 0.6": lambda a: 255.0 * (a / 255.0) ** 0.6,
    "gamma 1.6": lambda a: 255.0 * (a / 255.0) ** 1.6,
    "contrast x0.5": lambda a: a.mean() + 0.5 * (a - a.mean()),
    "blur sigma 1 mm": lambda a: blur(a, 10),
    "noise SD 25": lambda a: a + rng.normal(0, 25, a.shape),
}
if not everything:
    conditions = {k: v for k, v in conditions.items() if not k.startswith(("gamma", "contrast"))}
predictor = load_predictor(glob, refine=local)
records = list(test.records)
images = [read_image(r.image_path, spacing=0.1) for r in records]
truth = np.stack([r.points_mm for r in records])
results = {}
for name, change in conditions.items():
    start = time.time()
    changed = [dataclasses.replace(im, array=np.clip(change(im.array.astype(np.float32)), 0, 255).astype(np.float32)) for im in images]
    preds = predict(predictor, changed)
    err = np.linalg.norm(np.stack([p.points_mm for p in preds]) - truth, axis=-1)
    results[name] = {"mre": float(np.nanmean(err)), "median": float(np.nanmedian(err)),
                     "sdr2": float(np.nanmean(err <= 2.0)), "over10": int(np.nansum(err > 10)),
                     "seconds": time.time() - start}
    print(f"{name:18s} MRE {results[name]['mre']:.3f} median {results[name]['median']:.3f} "
          f"SDR@2 {100*results[name]['sdr2']:.1f} % >10mm {results[name]['over10']}", flush=True)
json.dump(results, open(out, "w"), indent=2)
