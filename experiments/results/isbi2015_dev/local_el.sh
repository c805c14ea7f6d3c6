#!/bin/bash
# Issue 13, session 12, local variant L: the v4 configuration's local U-Net (96x96 crops at
# 0.4 mm, 4000 steps) with elastic deformation of the crops, ELASTIC mm per control point
# (4x4 cubic B-spline over the crop). Usage: local_el.sh FOLD ELASTIC. Resumable: rerun it.
FOLD=${1:?usage: local_el.sh FOLD ELASTIC}
ELASTIC=${2:?usage: local_el.sh FOLD ELASTIC}
exec "$(dirname "$0")/dev_train.sh" /work/train_wt10 l${ELASTIC}_local_f$FOLD $FOLD \
  --architecture unet --crop-shape 96,96 --grid-spacing 0.4 --translation-mm 6 --batch-size 2 \
  --steps 4000 --elastic-mm $ELASTIC
