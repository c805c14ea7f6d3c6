"""Issue 13, session 12: keep the local stage's own-channel heatmaps of the v4 configuration's
held-out predictions (5 folds), for decoding probes without re-running the networks.
Writes /work/runs13/heatmaps/fold{K}.npz: crops' heatmaps (N, L, 96, 96) float16, the decoded
crop points (N, L, 2) (x, y crop index units), and the global, refined and true points (mm)."""
import os
import sys
import numpy as np
import tensorflow as tf
from keraslm.detector import load_detector
from keraslm.evaluation.sources import run_test_set
from keraslm.inference import load_predictor, predict
from keraslm.experiments.runs import stage_points
from keraslm.ops.heatmaps import HeatmapCodec

tf.config.run_functions_eagerly(True)
V = "/work/main/experiments/results/isbi2015_v4/runs"
OUT = "/work/runs13/heatmaps"
os.makedirs(OUT, exist_ok=True)
stash = []
original = HeatmapCodec.decode


def decode(self, heatmaps, method="quadratic", peak_weights=None):
    points, confidence = original(self, heatmaps, method, peak_weights)
    h = np.asarray(heatmaps, np.float32)
    if h.shape[1:3] == (96, 96):
        L = h.shape[-1]
        n = h.shape[0] // L
        h = h.reshape(n, L, 96, 96, L)
        p = np.asarray(points).reshape(n, L, L, 2)
        own = np.arange(L)
        stash.append((h[:, own, :, :, own].transpose(1, 0, 2, 3), p[:, own, own]))
    return points, confidence


HeatmapCodec.decode = decode
for k in [int(f) for f in sys.argv[1].split(",")]:
    stash.clear()
    test = run_test_set(f"{V}/scn_fold{k}")
    images = [test.read_image(test.record(i)) for i in test.ids]
    g = load_detector(f"{V}/scn_fold{k}/model.keras")
    loc = load_detector(f"{V}/local_unet_fold{k}/model.keras")
    preds = predict(load_predictor(g.network, metadata=g.metadata), images,
                    refine=load_predictor(loc.network, metadata=loc.metadata))
    refined = np.stack([p.points_mm for p in preds])
    s = stage_points(f"{V}/scn_fold{k}", f"{V}/local_unet_fold{k}")
    assert tuple(s.ids) == tuple(test.ids)
    print(f"fold {k}: {len(stash)} local calls; refined here vs stage_points: max diff "
          f"{np.abs(refined - s.refined_mm).max():.4f} mm", flush=True)
    heat = np.concatenate([h for h, _ in stash]); crop_points = np.concatenate([p for _, p in stash])
    np.savez(f"{OUT}/fold{k}.npz", heatmaps=heat.astype(np.float16), crop_points=crop_points,
             refined_mm=refined, global_mm=s.global_mm, ground_truth_mm=s.ground_truth_mm,
             stage_refined_mm=s.refined_mm)
