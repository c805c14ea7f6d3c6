"""Issue 13, session 8: two global stages (A: 2016 SCN, E3: 2019 SCN with dropout) combined before
A's local stage, fold 0's 30 held-out images. Usage: python ensemble_probe.py OUT.json"""
import json, sys
import numpy as np
from keraslm.data import select_split
from keraslm.datasets.isbi2015 import isbi2015
from keraslm.inference import CascadePredictor, load_predictor
from keraslm.io import read_image
R = "/work/runs13"
_, test = select_split(isbi2015("/work/shared/data/isbi2015-train"), fold=0, num_folds=5)
ga = load_predictor(f"{R}/a_global_f0/model.keras")
ge = load_predictor(f"{R}/e3_global_f0/model.keras")
cascade = CascadePredictor(ga, load_predictor(f"{R}/a_local_f0/model.keras"))
rows = {k: [] for k in ("A", "E3", "mean", "max confidence", "mean if within 5 mm else A", "A global", "E3 global", "mean global")}
for n, record in enumerate(test.records):
    image = read_image(record.image_path, spacing=0.1)
    a, e = ga.locate(image), ge.locate(image)
    pa, pe = np.asarray(a["landmarks_index"]), np.asarray(e["landmarks_index"])
    ca, ce = np.asarray(a["confidence"]).ravel(), np.asarray(e["confidence"]).ravel()
    dist_mm = np.linalg.norm(pa - pe, axis=-1) * 0.1
    choices = {"A": pa, "E3": pe, "mean": (pa + pe) / 2,
               "max confidence": np.where((ca >= ce)[:, None], pa, pe),
               "mean if within 5 mm else A": np.where((dist_mm <= 5)[:, None], (pa + pe) / 2, pa)}
    err = lambda p: np.linalg.norm(image.index_to_physical(p) - record.points_mm, axis=-1)
    for name, points in choices.items():
        refined, _ = cascade.refine_image(image, points.astype(np.float32))
        rows[name].append(err(refined))
    rows["A global"].append(err(pa)); rows["E3 global"].append(err(pe)); rows["mean global"].append(err((pa + pe) / 2))
    print(n, flush=True)
out = {}
for name, errs in rows.items():
    e = np.concatenate(errs)
    out[name] = {"mre": float(e.mean()), "sd": float(e.std()), "median": float(np.median(e)), "sdr2": float((e <= 2).mean()),
                 "over10": int((e > 10).sum()), "max": float(e.max())}
    print(f"{name:28s} MRE {e.mean():.3f} +- {e.std():.2f} median {np.median(e):.3f} SDR@2 {100*(e<=2).mean():.1f} % >10mm {(e>10).sum()} max {e.max():.1f}")
json.dump(out, open(sys.argv[1], "w"), indent=2)
