#!/bin/bash
# Issue 13 development runs: one ISBI 2015 fold of the 5-fold split, trained from the worktree
# pinned for the session, into /work/runs13/NAME; resumable (rerun the same command).
# Usage: dev_train.sh WORKTREE NAME FOLD TRAIN_FLAGS...   (see global_h.sh, local_el.sh, local_wide.sh)
WORKTREE=${1:?usage: dev_train.sh WORKTREE NAME FOLD TRAIN_FLAGS...}
NAME=${2:?usage: dev_train.sh WORKTREE NAME FOLD TRAIN_FLAGS...}
FOLD=${3:?usage: dev_train.sh WORKTREE NAME FOLD TRAIN_FLAGS...}
shift 3
cd "$WORKTREE" || exit 1
. /work/main/.venv/bin/activate
export PYTHONPATH="$WORKTREE" KERASLM_CACHE=/work/main/.cache/keraslm
OUT=/work/runs13/$NAME
start=$(date +%s)
if [ ! -f "$OUT/model.keras" ]; then
  python train.py --dataset isbi2015 --dataset-root /work/shared/data/isbi2015-train \
    --fold "$FOLD" --num-folds 5 "$@" --output-dir "$OUT" --no-export \
    $( [ -d "$OUT/checkpoints" ] && echo --resume )
fi
echo "WALL $(( $(date +%s) - start )) s"
