#!/bin/bash
# Issue 13, version 6 (ensemble): the second members of one fold - global H (GG's SCN on a
# 240x208 grid at 1.0 mm) and local L (v4's local U-Net with 3 mm elastic deformation) - trained
# side by side into the ISBI driver's run folders, with the settings the driver gives them
# (experiments/isbi2015_cv.py ... --ensemble-grid-shape 240,208 --ensemble-local-elastic-mm 3,
# see the README); the driver then skips them. Usage: v6_members.sh FOLD [WORKTREE].
# Resumable: run it again after an interruption (training_seconds.json then counts the last part).
FOLD=${1:?usage: v6_members.sh FOLD [WORKTREE]}
WORKTREE=${2:-/work/train_wt11}   # a worktree pinned for the runs: git worktree add --detach DIR HEAD
RUNS=/work/main/experiments/results/isbi2015_v6/runs
cd "$WORKTREE" || { echo "no worktree $WORKTREE: make one with git worktree add --detach $WORKTREE HEAD" >&2; exit 1; }
mkdir -p /work/runs13 "$RUNS"
. /work/main/.venv/bin/activate
export PYTHONPATH="$WORKTREE" KERASLM_CACHE=/work/main/.cache/keraslm

member() {
  local out=$RUNS/$1_fold$FOLD; shift
  [ -f "$out/metrics.json" ] && { echo "$out: finished before"; return; }
  local start=$(date +%s)
  python train.py --dataset isbi2015 --dataset-root /work/shared/data/isbi2015-train \
    --fold "$FOLD" --num-folds 5 "$@" --output-dir "$out" --no-export \
    $( [ -d "$out/checkpoints" ] && echo --resume ) &&
  echo "{\"seconds\": $(( $(date +%s) - start ))}" > "$out/training_seconds.json"
}
member scn_member2 --grid-shape 240,208 --steps 4000 --rotation-degrees 8 --scale-range 0.05 \
  > /work/runs13/v6_scn_member2_fold$FOLD.log 2>&1 &
member local_unet_member2 --architecture unet --crop-shape 96,96 --grid-spacing 0.4 \
  --translation-mm 6 --batch-size 2 --steps 4000 --elastic-mm 3 \
  > /work/runs13/v6_local_unet_member2_fold$FOLD.log 2>&1 &
wait
