#!/bin/bash
# Issue 13, session 11, global variant H on fold 1 (after fold 0): 240x208 at 1.0 mm, 4000 steps.
# Resumable: rerun this script.
while pgrep -f fold0_h.sh > /dev/null; do sleep 15; done
cd /work/train_wt9
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/train_wt9 KERASLM_CACHE=/work/main/.cache/keraslm
R=/work/runs13
start=$(date +%s)
if [ ! -f $R/h_global_f1/model.keras ]; then
python train.py --dataset isbi2015 --dataset-root /work/shared/data/isbi2015-train --fold 1 --num-folds 5 \
  --grid-shape 240,208 --steps 4000 --rotation-degrees 8 --scale-range 0.05 \
  --output-dir $R/h_global_f1 --no-export $( [ -d $R/h_global_f1/checkpoints ] && echo --resume )
fi
echo "WALL $(( $(date +%s) - start )) s"
