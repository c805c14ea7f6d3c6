"""The installed commands (`setup.cfg` console scripts), thin layers over the library:

- `keraslm-train` (`keraslm.commands.train`; `python train.py` in a checkout),
- `keraslm-evaluate` (`keraslm.commands.evaluate`; `python evaluate.py`),
- `keraslm-predict` (`keraslm.inference.main`),
- `keraslm-dataset` (`keraslm.datasets.__main__`).

Each parses its arguments, prints progress and results, and turns a `KeraslmError` into one
line on stderr and exit status 2.
"""
