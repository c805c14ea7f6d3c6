#!/bin/bash
# Issue 13, session 11, global variant H: GG's global SCN on a finer grid, 240x208 at 1.0 mm
# (GG: 192x160 at 1.25 mm), 4000 steps, one fold. Usage: global_h.sh FOLD. Resumable: rerun it.
# (Run as /work/runs13/fold0_h.sh and fold1_h.sh, the same with the fold written in.)
FOLD=${1:?usage: global_h.sh FOLD}
cd /work/train_wt9
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/train_wt9 KERASLM_CACHE=/work/main/.cache/keraslm
OUT=/work/runs13/h_global_f$FOLD
start=$(date +%s)
if [ ! -f $OUT/model.keras ]; then
python train.py --dataset isbi2015 --dataset-root /work/shared/data/isbi2015-train --fold $FOLD --num-folds 5 \
  --grid-shape 240,208 --steps 4000 --rotation-degrees 8 --scale-range 0.05 \
  --output-dir $OUT --no-export $( [ -d $OUT/checkpoints ] && echo --resume )
fi
echo "WALL $(( $(date +%s) - start )) s"
