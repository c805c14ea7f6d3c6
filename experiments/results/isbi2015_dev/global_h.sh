#!/bin/bash
# Issue 13, session 11, global variant H: GG's global SCN on a finer grid, 240x208 at 1.0 mm
# (GG: 192x160 at 1.25 mm), 4000 steps, one fold. Usage: global_h.sh FOLD. Resumable: rerun it.
# (Run as /work/runs13/fold0_h.sh and fold1_h.sh, the same with the fold written in.)
FOLD=${1:?usage: global_h.sh FOLD}
exec "$(dirname "$0")/dev_train.sh" /work/train_wt9 h_global_f$FOLD $FOLD \
  --grid-shape 240,208 --steps 4000 --rotation-degrees 8 --scale-range 0.05
