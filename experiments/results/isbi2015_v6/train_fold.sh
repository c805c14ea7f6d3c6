#!/bin/bash
# Version 6's configuration, one fold: its four runs (global SCN GG and H, local U-Net and its
# elastic second member) in two lanes side by side - the global lane and the local lane - into
# the ISBI driver's run folders, with the settings the driver gives them (the README's version-6
# driver command); the driver then finds them finished and only reports. Usage:
#   [LANES=global|local|flip|mean] train_fold.sh FOLD [WORKTREE]
# Resumable: run it again after an interruption (each run continues from its checkpoints;
# training_seconds.json sums the parts, to the minute). WORKTREE: a checkout pinned for the runs
# (git worktree add --detach DIR COMMIT), so that work on main does not change a running job.
FOLD=${1:?usage: train_fold.sh FOLD [WORKTREE]}
WORKTREE=${2:-/work/train_wt}
RUNS=/work/main/experiments/results/isbi2015_v6/runs
LOGS=/work/runs_logs
# Started with setsid (its own session), the job is its own scheduler autogroup, in which `nice`
# alone does not lower its share against other sessions: lower the group's too (Linux).
echo 19 > /proc/self/autogroup 2>/dev/null || true
cd "$WORKTREE" || { echo "no worktree $WORKTREE: git worktree add --detach $WORKTREE HEAD" >&2; exit 1; }
mkdir -p "$LOGS" "$RUNS"
. /work/main/.venv/bin/activate
export PYTHONPATH="$WORKTREE" KERASLM_CACHE=/work/main/.cache/keraslm

run() {
  local out=$RUNS/$1_fold$FOLD; shift
  [ -f "$out/metrics.json" ] && { echo "$out: finished before"; return 0; }
  local start=$(date +%s) before=0
  [ -f "$out/training_seconds.json" ] && before=$(python -c "import json;print(json.load(open('$out/training_seconds.json'))['seconds'])")
  mkdir -p "$out"
  # Record the training time every minute, so an interrupted chunk keeps its time too.
  ( while sleep 60; do echo "{\"seconds\": $(( before + $(date +%s) - start ))}" > "$out/training_seconds.json"; done ) &
  local ticker=$!
  python train.py --dataset isbi2015 --dataset-root "${DATASET_ROOT:-/work/shared/data/isbi2015-train}" \
    --fold "$FOLD" --num-folds 5 "$@" --output-dir "$out" --no-export \
    $( [ -d "$out/checkpoints" ] && echo --resume )
  local rc=$?
  kill $ticker
  echo "{\"seconds\": $(( before + $(date +%s) - start ))}" > "$out/training_seconds.json"
  return $rc
}
global_lane() {
  run scn --grid-shape 192,160 --steps 4000 --rotation-degrees 8 --scale-range 0.05 &&
  run scn_member2 --grid-shape 240,208 --steps 4000 --rotation-degrees 8 --scale-range 0.05
}
local_lane() {
  local common="--architecture unet --crop-shape 96,96 --grid-spacing 0.4 --translation-mm 6 --batch-size 2 --steps 4000"
  run local_unet $common &&
  run local_unet_member2 $common --elastic-mm 3
}
# Left-facing cephalograms (issue 31): the global and the local run of version 6 trained with
# random horizontal flips (--flip x), one after the other. Not part of the default lanes.
flip_lane() {
  run scn_flip --grid-shape 192,160 --steps 4000 --rotation-degrees 8 --scale-range 0.05 --flip x &&
  run local_unet_flip --architecture unet --crop-shape 96,96 --grid-spacing 0.4 --translation-mm 6 \
    --batch-size 2 --steps 4000 --flip x
}
# The second annotator (issue 31): version 6's first global and first local run trained on the
# mean of both doctors' landmarks (experiments/isbi2015_mean_labels.py writes that folder).
mean_lane() {
  DATASET_ROOT=${MEAN_LABELS_ROOT:-/work/isbi2015_mean_labels}
  [ -f "$DATASET_ROOT/landmarks.csv" ] || { echo "no $DATASET_ROOT/landmarks.csv: python experiments/isbi2015_mean_labels.py --output-dir $DATASET_ROOT" >&2; return 1; }
  run scn_meanlabels --grid-shape 192,160 --steps 4000 --rotation-degrees 8 --scale-range 0.05 &&
  run local_unet_meanlabels --architecture unet --crop-shape 96,96 --grid-spacing 0.4 \
    --translation-mm 6 --batch-size 2 --steps 4000
}
# LANES="global local" (default), one of them, "flip" or "mean".
for lane in ${LANES:-global local}; do
  ${lane}_lane >> "$LOGS/v6_${lane}_fold$FOLD.log" 2>&1 &
done
wait
