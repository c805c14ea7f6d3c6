"""ISBI 2015, the shipped model from version 6's networks: exported again by this keraslm (its
faster prediction graph) with a mirror check for patients facing left (version 7) and a shape
vote in the calibration that flags points the other landmarks place elsewhere (version 8).

Version 6's `.keras` stages are not kept; its SavedModel holds every weight. The four networks
(two global SCNs, two local U-Nets: `build_model(architecture, 2, 19, preset="small")`) are
built from the SavedModel's spec, their weights taken from the `predict_array` signature's
captured variables, which come in the networks' order (names and shapes are checked one by
one). The rebuilt detector must reproduce version 6 on the first training images (points within
1e-3 mm) before anything is exported.

The mirror check's threshold: the global ensemble's mean confidence on every training image as
it is and mirrored left-right (`keraslm.calibration.fit_mirror_threshold`). No mirrored image
was ever seen in training, so their confidences are what a left-facing patient gives; the
upright ones are training images (higher than held-out ones would be), so the report sets the
threshold beside fold 0's held-out upright confidences too.

The shape vote (`--shape-vote-margin M`): `keraslm.calibration.fit_shape_vote` on the senior
doctor's landmarks of all 150 training images, added to version 6's calibration (the heatmap
part unchanged); experiments/isbi2015_flag.py measures it on a fold's held-out images.

    python experiments/isbi2015_shipped.py --version 7 --output-dir experiments/results/isbi2015_v7
    python experiments/isbi2015_shipped.py --version 8 --shape-vote-margin 2 \
        --output-dir experiments/results/isbi2015_v8

`--calibration-records DIR` refits the calibration instead (version 9): the heatmap calibration
with the confidence damped by the global second peak (`--second-peak-power`) and the shape vote,
from the recorded held-out predictions of the ensemble configuration's cross-validation folds
(`experiments/isbi2015_records.py`), with its cross-fitted flag figures against the same refit
without the second peak. The source's blend weights (`local_weight`) are kept, so the exported
model answers the source's points (the figures measured with it on held-out data still hold);
`--refit-blend-weights` refits them on the records too (other points):

    python experiments/isbi2015_shipped.py --source saved_models/isbi2015_scn/8 --version 9 \
        --shape-vote-margin 2 --calibration-records experiments/results/isbi2015_records \
        --output-dir experiments/results/isbi2015_v9
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keraslm.calibration import (  # noqa: E402
    SECOND_PEAK_POWER,
    fit_mirror_threshold,
    fit_shape_vote,
)
from keraslm.datasets import load_dataset  # noqa: E402
from keraslm.experiments.runs import write_experiment  # noqa: E402
from keraslm.export import export_saved_model  # noqa: E402
from keraslm.experiments.isbi2015 import mirrored_left_right  # noqa: E402
from keraslm.models import build_model  # noqa: E402
from keraslm.precision import describe_machine  # noqa: E402
from keraslm.prediction import LandmarkDetector, load_predictor, predict  # noqa: E402
from keraslm.spec import MirrorCheck  # noqa: E402


def rebuilt_detector(saved_model_dir, preset):
    """The Keras detector of an exported SavedModel whose networks are `build_model(...,
    preset=preset)` of its stages' architectures, with the SavedModel's weights."""
    saved = load_predictor(saved_model_dir)
    spec = saved.spec
    captured = saved._loaded.signatures["predict_array"].variables
    networks = [build_model(s.architecture, spec.ndim, len(spec.landmark_names), preset=preset)
                for s in spec.global_stages + spec.local_stages]
    weights = [w for network in networks for w in network.weights]
    if len(weights) != len(captured):
        raise SystemExit(f"{saved_model_dir}: {len(captured)} variables, the rebuilt networks "
                         f"have {len(weights)}")
    for weight, variable in zip(weights, captured):
        if weight.path != variable.name.split(":")[0] or tuple(weight.shape) != tuple(variable.shape):
            raise SystemExit(f"{saved_model_dir}: variable {variable.name} {variable.shape} does "
                             f"not match {weight.path} {weight.shape}")
        weight.assign(variable.numpy())
    count = len(spec.global_stages)
    return saved, LandmarkDetector(spec, networks[:count], networks[count:])


def _refit_calibration(args, spec, dataset):
    """{calibration, qualities, text}: the calibration refitted on the records' ensemble folds
    (with and, for comparison, without the second peak)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from isbi2015_records import calibration_from_records, load_records

    by_fold = load_records(args.calibration_records).get("ensemble", {})
    if len(by_fold) < 2:
        raise SystemExit(f"{args.calibration_records}: {len(by_fold)} fold(s) of the ensemble "
                         "configuration recorded; the refit needs two or more "
                         "(experiments/isbi2015_records.py save)")
    for fold, (_, description) in sorted(by_fold.items()):
        if description["landmark_names"] != list(spec.landmark_names):
            raise SystemExit(f"{args.calibration_records}: fold {fold}'s record has landmarks "
                             f"{description['landmark_names']}, {args.source} has "
                             f"{list(spec.landmark_names)}")
    runs = "; ".join(" & ".join(r["run"] for r in by_fold[f][1]["runs"]) for f in sorted(by_fold))
    shapes = np.stack([r.points_mm for r in dataset.records])
    source = (f"held-out predictions of folds {', '.join(map(str, sorted(by_fold)))} recorded in "
              f"{args.calibration_records} ({runs}); shape vote: the {len(shapes)} training "
              "shapes (senior doctor)")
    kept = None if args.refit_blend_weights else (spec.calibration or {}).get("local_weight")
    if kept is None and not args.refit_blend_weights:
        raise SystemExit(f"{args.source}: its calibration has no blend weights (local_weight) "
                         "to keep; give --refit-blend-weights to fit them on the records")
    qualities, calibration = {}, None
    for power in dict.fromkeys((args.second_peak_power, 0.0)):  # The comparison without.
        fitted, quality = calibration_from_records(
            by_fold, list(spec.landmark_names), shapes, args.shape_vote_margin, power, source,
            local_weight=kept)
        qualities[f"second_peak_power {power:g}"] = quality
        calibration = calibration or fitted
    rows = [f"| {label} | {100 * q['flagged_fraction']:.1f} | {q['caught_fraction'] * 100:.0f} % "
            f"of {q['num_large']} | {q['far_caught']} of {q['num_far']} | {q['spearman']:.3f} |"
            for label, q in qualities.items()]
    quality = next(iter(qualities.values()))
    text = "\n".join([
        f"Calibration refitted on the ensemble's recorded held-out predictions of folds "
        f"{', '.join(map(str, quality['folds']))} (`{args.calibration_records}`; blended MRE "
        f"{quality['mre_mm']:.2f} mm): "
        + ("blend weights refitted (other points than the source), "
           if args.refit_blend_weights else
           "the source's blend weights kept (its points unchanged), ")
        + "heatmap calibration ("
        + (f"confidence x (1 - second peak)^{args.second_peak_power:g}"
           if args.second_peak_power else "confidence, no second peak")
        + ") and a shape vote with margin "
        f"{args.shape_vote_margin:g} fitted on the {len(dataset.records)} training shapes. "
        "Cross-fitted over the folds (each fold's expected errors from a calibration fitted on "
        "the others, the vote on their held-out shapes), flag at 2.5 mm:", "",
        "| calibration | flagged % | errors > 4 mm caught | errors > 10 mm caught | Spearman |",
        "|---|---|---|---|---|"] + rows)
    return {"calibration": calibration, "qualities": qualities, "text": text}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="saved_models/isbi2015_scn/6")
    parser.add_argument("--base-dir", default="saved_models/isbi2015_scn")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--shape-vote-margin", type=float,
                        help="add a shape vote with this margin to the calibration")
    parser.add_argument("--calibration-records", metavar="DIR",
                        help="refit the calibration on these records' ensemble folds "
                        "(experiments/isbi2015_records.py; needs --shape-vote-margin)")
    parser.add_argument("--refit-blend-weights", action="store_true",
                        help="with --calibration-records: refit the blend weights too (the "
                        "exported model then answers other points than the source)")
    parser.add_argument("--second-peak-power", type=float, default=SECOND_PEAK_POWER,
                        help="with --calibration-records: the second-peak damping (0: none)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--dataset-root", default="../shared/data/isbi2015-train")
    parser.add_argument("--facing-results", default="experiments/results/isbi2015_facing/"
                        "fold0_c2f/results.json", help="fold 0's held-out global confidences")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    if args.calibration_records and args.shape_vote_margin is None:
        parser.error("--calibration-records needs --shape-vote-margin")
    if args.refit_blend_weights and not args.calibration_records:
        parser.error("--refit-blend-weights needs --calibration-records")
    if not (np.isfinite(args.second_peak_power) and args.second_peak_power >= 0):
        parser.error(f"--second-peak-power must be a number >= 0. Received: "
                     f"{args.second_peak_power}")
    print(describe_machine(), flush=True)
    saved, detector = rebuilt_detector(args.source, args.preset)
    dataset = load_dataset("isbi2015", root=args.dataset_root)
    images = [dataset.read_image(record) for record in dataset.records]
    check_images = images[:3]
    reproduced = max(float(np.abs(a.points_mm - b.points_mm).max()) for a, b in zip(
        predict(saved, check_images), predict(detector, check_images)))
    print(f"rebuilt detector vs {args.source}: points within {reproduced:.2e} mm", flush=True)
    if reproduced > 1e-3:
        raise SystemExit(f"the rebuilt networks do not reproduce {args.source}")
    spec = detector.spec
    # Without the source's own mirror check (version 8 has one): it would flip a mirrored
    # image back before its confidence is read.
    global_only = LandmarkDetector(spec.replace(local_stages=(), calibration=None,
                                                mirror_check=None), detector.networks)
    upright = np.array([a.confidence.mean() for a in predict(global_only, images)])
    mirrors = np.array([a.confidence.mean()
                        for a in predict(global_only, [mirrored_left_right(i) for i in images])])
    threshold = fit_mirror_threshold(upright, mirrors)
    check = MirrorCheck("x", round(threshold, 2))
    print(f"global confidence: upright {upright.min():.1f}-{upright.max():.1f}, mirrored "
          f"{mirrors.min():.1f}-{mirrors.max():.1f}; threshold {check.confidence_below}", flush=True)
    shipped_spec = spec.replace(mirror_check=check)
    refit = None
    if args.calibration_records:
        refit = _refit_calibration(args, spec, dataset)
        shipped_spec = shipped_spec.replace(calibration=refit["calibration"])
    elif args.shape_vote_margin is not None:
        vote = fit_shape_vote(np.stack([r.points_mm for r in dataset.records]),
                              spec.landmark_names, margin=args.shape_vote_margin)
        shipped_spec = shipped_spec.replace(calibration={
            **spec.calibration, "shape_vote": vote,
            "source": f"{spec.calibration.get('source')}; shape vote: the {vote['num_shapes']} "
                      "training shapes (senior doctor)"})
    with_check = LandmarkDetector(shipped_spec, detector.networks, detector.local_networks)
    path = os.path.relpath(export_saved_model(with_check, args.base_dir, version=args.version))
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)
    held_out = None
    if os.path.exists(args.facing_results):
        with open(args.facing_results, encoding="utf-8") as handle:
            held_out = json.load(handle)
    lines = [f"# ISBI 2015 version {args.version}: version 6's networks, this keraslm's graph, "
             "a mirror check" + ("" if args.shape_vote_margin is None else ", a shape vote"), "",
             f"{describe_machine()}. Source: `{args.source}` ({len(detector.networks)} global "
             f"and {len(detector.local_networks)} local networks, preset {args.preset!r}); "
             f"rebuilt, it reproduces the source on {len(check_images)} training images within "
             f"{reproduced:.1e} mm. Exported: `{path}` ({size / 1e6:.1f} MB).", "",
             f"Mirror check along x below a mean global confidence of **{check.confidence_below}**"
             f" (`fit_mirror_threshold`): the global ensemble's mean confidence on the "
             f"{len(images)} training images as they are {upright.min():.1f} to "
             f"{upright.max():.1f} (median {np.median(upright):.1f}), mirrored "
             f"{mirrors.min():.1f} to {mirrors.max():.1f} (median {np.median(mirrors):.1f})."]
    if refit is not None:
        lines += ["", refit["text"]]
    elif args.shape_vote_margin is not None:
        scale = shipped_spec.calibration["shape_vote"]["scale_mm"]
        lines += ["", f"Shape vote: fitted on the {len(dataset.records)} training shapes (the "
                  f"senior doctor's landmarks), margin {args.shape_vote_margin:g} x each "
                  f"landmark's variation ({min(scale):.1f} to {max(scale):.1f} mm, held-out "
                  "shapes of 5 folds); the heatmap calibration is version 6's."]
    if held_out is not None:
        fold_upright = np.asarray(held_out["upright_confidence"])
        lines += ["", f"For comparison, fold 0's global run on its 30 held-out images (never seen "
                  f"in its training): as they are {fold_upright.min():.1f} to "
                  f"{fold_upright.max():.1f}, mirrored "
                  f"{min(held_out['mirrored_confidence']):.1f} to "
                  f"{max(held_out['mirrored_confidence']):.1f} (`{args.facing_results}`)."]
    print(write_experiment(
        args.output_dir, lines,
        {"source": args.source, "exported": path, "size_bytes": size,
         "reproduced_within_mm": reproduced, "mirror_check": check.to_json(),
         "ids": [r.id for r in dataset.records], "upright_confidence": upright.tolist(),
         "mirrored_confidence": mirrors.tolist(),
         "calibration_quality": None if refit is None else refit["qualities"]},
        "experiments/isbi2015_shipped.py", argv if argv is not None else sys.argv[1:],
        table="export.md", results="export.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
