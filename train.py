"""Train a heatmap regression network for landmark localization: `keraslm-train` in a
checkout (`keraslm.commands.train`). With no arguments: a small SpatialConfiguration-Net on the
built-in 2D hand phantom, a few minutes on a 2-core CPU. See --help.
"""
import sys

from keraslm.commands.train import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
