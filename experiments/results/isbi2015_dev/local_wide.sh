#!/bin/bash
# Issue 13, session 12, local variant W: the v4 configuration's local U-Net on wider crops at the
# same resolution - 128x128 at 0.4 mm (51 mm of context; v4: 96x96, 38 mm) - 3000 steps (v4's
# crop validation is flat after about 2500 of its 4000). Usage: local_wide.sh FOLD. Resumable.
FOLD=${1:?usage: local_wide.sh FOLD}
exec "$(dirname "$0")/dev_train.sh" /work/train_wt10 w_local_f$FOLD $FOLD \
  --architecture unet --crop-shape 128,128 --grid-spacing 0.4 --translation-mm 6 --batch-size 2 \
  --steps 3000
