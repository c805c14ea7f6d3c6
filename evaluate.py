"""Evaluate landmark predictions the way the paper reports them: `keraslm-evaluate` in a
checkout (`keraslm.commands.evaluate`). See --help.
"""
import sys

from keraslm.commands.evaluate import main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
