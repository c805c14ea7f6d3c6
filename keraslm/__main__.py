"""`python -m keraslm COMMAND [ARGS...]`: the installed `keraslm-COMMAND` scripts without
installing them (COMMAND: train, evaluate, predict, dataset, export; `--help` on each)."""
import importlib
import sys

from keraslm.commands import COMMANDS


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        wants_help = argv[:1] in (["-h"], ["--help"])
        usage = ("usage: python -m keraslm {" + ",".join(COMMANDS) + "} [ARGS...]\n"
                 "  (the same as keraslm-train, keraslm-evaluate, ...; '--help' after a command "
                 "explains it)")
        if argv and not wants_help:
            usage += f"\nerror: unknown command {argv[0]!r}"
        print(usage, file=sys.stdout if wants_help else sys.stderr)
        return 0 if wants_help else 2
    command = importlib.import_module(COMMANDS[argv[0]])
    return command.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
