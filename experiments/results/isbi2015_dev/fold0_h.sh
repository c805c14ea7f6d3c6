#!/bin/bash
# Issue 13, session 11, global variant H: GG's global SCN (fold 0) on a finer grid, 240x208 at
# 1.0 mm (GG: 192x160 at 1.25 mm), 4000 steps. Resumable: rerun this script.
cd /work/train_wt9
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/train_wt9 KERASLM_CACHE=/work/main/.cache/keraslm
R=/work/runs13
start=$(date +%s)
if [ ! -f $R/h_global_f0/model.keras ]; then
python train.py --dataset isbi2015 --dataset-root /work/shared/data/isbi2015-train --fold 0 --num-folds 5 \
  --grid-shape 240,208 --steps 4000 --rotation-degrees 8 --scale-range 0.05 \
  --output-dir $R/h_global_f0 --no-export $( [ -d $R/h_global_f0/checkpoints ] && echo --resume )
fi
echo "WALL $(( $(date +%s) - start )) s"
