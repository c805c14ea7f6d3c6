"""The installed commands (`setup.cfg` console scripts; `python -m keraslm COMMAND` runs the
same without installed scripts), thin layers over the library:

- `keraslm-train` (`keraslm.commands.train`; `python train.py` in a checkout),
- `keraslm-evaluate` (`keraslm.commands.evaluate`; `python evaluate.py`),
- `keraslm-predict` (`keraslm.commands.predict`),
- `keraslm-dataset` (`keraslm.commands.dataset`),
- `keraslm-export` (`keraslm.commands.export`).

Each parses its arguments, prints progress and results, and turns a `KeraslmError` into one
line on stderr and exit status 1 (bad data or files) or 2 (bad arguments; `exit_status`).
"""
#: command name -> module with `main(argv)`.
COMMANDS = {
    "train": "keraslm.commands.train",
    "evaluate": "keraslm.commands.evaluate",
    "predict": "keraslm.commands.predict",
    "dataset": "keraslm.commands.dataset",
    "export": "keraslm.commands.export",
}
