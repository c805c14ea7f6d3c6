"""ISBI 2015: the queue of cross-validation trainings that issue 31 still needs, in order of
priority, and its state. `status` lists every run (finished, epochs done, training time); `train`
works the queue with a number of workers, each taking the first run that is neither finished nor
taken by another worker (a lock file per run, released when its worker ends, however it ends),
and resuming it from its checkpoints; after each finished run it records the fold's held-out
predictions of every configuration that run completes (`isbi2015_records.py save`, into the
repository: commit them). A run whose configurations are all recorded for its fold is not
needed again, even when its folder is gone with a machine ("recorded"). Stop it any time (a session's end kills it); start it again
to continue. The runs are version 6's configuration, the settings the README's version-6 driver
(`experiments/isbi2015_cv.py`) gives them, in its run folders (`experiments/results/isbi2015_v6/
runs/<run>_fold<K>`), so the driver and the fold experiments find them.

    python experiments/isbi2015_queue.py status [--output-dir experiments/results/isbi2015_queue]
    nohup setsid python experiments/isbi2015_queue.py train --workers 2 \\
        --worktree /work/train_wt2 > /work/runs_logs/queue.log 2>&1 &

Order (the run folders of sessions 15-22 were lost with their machine on 2026-12-05, so every
run trains again): folds 0 and 1's coarse-to-fine pairs (what every comparison of the issue
stands on), both folds' pairs trained on the mean of the two doctors' labels
(`--mean-labels-root`, written by `experiments/isbi2015_mean_labels.py`), fold 1's flip-trained
pair (flips against the check), the second ensemble members of folds 0 and 1, folds 2-4's four
runs each, and last fold 0's flip-trained pair (its figures are published from the lost runs).
"""
import argparse
import fcntl
import json
import os
import shlex
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from isbi2015_records import CONFIGURATIONS, RECORDS_DIR, record_paths  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS_DIR = os.path.join(REPO, "experiments", "results", "isbi2015_v6", "runs")
STEPS = 4000
STEPS_PER_EPOCH = 100
_GLOBAL = ["--steps", str(STEPS), "--rotation-degrees", "8", "--scale-range", "0.05"]
_LOCAL = ["--architecture", "unet", "--crop-shape", "96,96", "--grid-spacing", "0.4",
          "--translation-mm", "6", "--batch-size", "2", "--steps", str(STEPS)]
#: Each kind of run: its train.py arguments and whether it trains on the mean labels.
KINDS = {
    "scn": (["--grid-shape", "192,160"] + _GLOBAL, False),
    "local_unet": (_LOCAL, False),
    "scn_member2": (["--grid-shape", "240,208"] + _GLOBAL, False),
    "local_unet_member2": (_LOCAL + ["--elastic-mm", "3"], False),
    "scn_flip": (["--grid-shape", "192,160"] + _GLOBAL + ["--flip", "x"], False),
    "local_unet_flip": (_LOCAL + ["--flip", "x"], False),
    "scn_meanlabels": (["--grid-shape", "192,160"] + _GLOBAL, True),
    "local_unet_meanlabels": (_LOCAL, True),
}
PLAN = ([("scn", 0), ("local_unet", 0), ("scn", 1), ("local_unet", 1),
         ("scn_meanlabels", 0), ("local_unet_meanlabels", 0),
         ("scn_meanlabels", 1), ("local_unet_meanlabels", 1),
         ("scn_flip", 1), ("local_unet_flip", 1),
         ("scn_member2", 0), ("local_unet_member2", 0),
         ("scn_member2", 1), ("local_unet_member2", 1)]
        + [(kind, fold) for fold in (2, 3, 4)
           for kind in ("scn", "local_unet", "scn_member2", "local_unet_member2")]
        + [("scn_flip", 0), ("local_unet_flip", 0)])


def run_name(kind, fold):
    return f"{kind}_fold{fold}"


def train_command(kind, fold, runs_dir, dataset_root, mean_labels_root):
    """The train.py command line (a list) of one run; `--resume` when it has checkpoints."""
    arguments, mean_labels = KINDS[kind]
    output = os.path.join(runs_dir, run_name(kind, fold))
    command = [sys.executable, "train.py", "--dataset", "isbi2015", "--dataset-root",
               mean_labels_root if mean_labels else dataset_root, "--fold", str(fold),
               "--num-folds", "5"] + arguments + ["--output-dir", output, "--no-export"]
    if _run_folder(output).has_checkpoints():
        command.append("--resume")
    return command


def _run_folder(path):
    from keraslm.run_folder import RunFolder  # light: no TensorFlow

    return RunFolder(path)


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def is_recorded(records_dir, kind, fold):
    """True when every records configuration the run is part of (`isbi2015_records.
    CONFIGURATIONS`) is recorded for its fold in `records_dir` (None: never): the run is not
    needed again."""
    if records_dir is None:
        return False
    configurations = [name for name, (global_kinds, local_kinds, _) in CONFIGURATIONS.items()
                      if kind in global_kinds + local_kinds]
    return all(os.path.isfile(path) for name in configurations
               for path in record_paths(records_dir, name, fold))


def run_state(runs_dir, kind, fold, records_dir=None):
    """dict: `finished` (bool), `recorded` (bool, `is_recorded`), `epochs` done, `seconds` of
    training recorded so far."""
    folder = os.path.join(runs_dir, run_name(kind, fold))
    history = _read_json(os.path.join(folder, "history.json"), {}) or {}
    seconds = (_read_json(os.path.join(folder, "training_seconds.json"), {}) or {}).get("seconds")
    return {"finished": _run_folder(folder).is_finished(),
            "recorded": is_recorded(records_dir, kind, fold),
            "epochs": len(history.get("loss", [])), "seconds": seconds,
            "started": os.path.isdir(folder)}


def _done(state):
    return state["finished"] or state["recorded"]


def _lock_path(runs_dir, kind, fold):
    return os.path.join(runs_dir, f".{run_name(kind, fold)}.lock")


def _try_lock(runs_dir, kind, fold):
    """An open, exclusively locked file of the run, or None when another process holds it."""
    os.makedirs(runs_dir, exist_ok=True)
    handle = open(_lock_path(runs_dir, kind, fold), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def status_lines(runs_dir, plan=PLAN, records_dir=None):
    """The queue's state as table lines."""
    lines = ["| # | run | state | epochs | training h |", "|---|---|---|---|---|"]
    epochs_total = STEPS // STEPS_PER_EPOCH
    for number, (kind, fold) in enumerate(plan, 1):
        state = run_state(runs_dir, kind, fold, records_dir)
        lock = None if _done(state) else _try_lock(runs_dir, kind, fold)
        if state["finished"]:
            word = "finished"
        elif state["recorded"]:
            word = "recorded"
        elif lock is None:
            word = "training"
        else:
            word = "partial" if state["started"] else "waiting"
            lock.close()
        hours = "" if state["seconds"] is None else f"{state['seconds'] / 3600:.1f}"
        lines.append(f"| {number} | {run_name(kind, fold)} | {word} | "
                     f"{epochs_total if state['finished'] else state['epochs']}/{epochs_total} "
                     f"| {hours} |")
    return lines


def _die_with_parent():
    """In the child before exec (Linux): SIGTERM when the worker that started it ends, so that
    no training outlives a killed queue (its seconds would go unrecorded and its folder could
    be trained twice by the next queue)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _train_one(kind, fold, args, log, lock):
    """Trains (or resumes) one run, recording its training seconds every minute. The child
    inherits the run's `lock` (an open file), so the run stays locked while it trains."""
    folder = os.path.join(args.runs_dir, run_name(kind, fold))
    os.makedirs(folder, exist_ok=True)
    seconds_path = os.path.join(folder, "training_seconds.json")
    before = (_read_json(seconds_path, {}) or {}).get("seconds", 0)
    start = time.time()
    done = threading.Event()

    def record():
        temporary = f"{seconds_path}.{threading.get_ident()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"seconds": int(before + time.time() - start)}, handle)
        os.replace(temporary, seconds_path)

    def ticker():
        while not done.wait(60):
            record()

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    command = train_command(kind, fold, args.runs_dir, args.dataset_root, args.mean_labels_root)
    # The checkout's cache by default: its XLA probes (a probe timed beside another training
    # can decide either way) and prepared images are the earlier runs'.
    env = dict(os.environ, PYTHONPATH=args.worktree)
    env.setdefault("KERASLM_CACHE", os.path.join(REPO, ".cache", "keraslm"))
    print(f"{time.strftime('%H:%M:%S')} {run_name(kind, fold)}: {shlex.join(command)}",
          file=log, flush=True)
    try:
        code = subprocess.call(command, cwd=args.worktree, env=env, stdout=log, stderr=log,
                               pass_fds=(lock.fileno(),), preexec_fn=_die_with_parent)
    finally:
        done.set()
        thread.join()
        record()
    print(f"{time.strftime('%H:%M:%S')} {run_name(kind, fold)}: exit {code}", file=log, flush=True)
    return code


def _next_run(args, failed):
    """(kind, fold, its lock) of the first run neither finished, recorded, failed in this
    queue nor locked by another worker (checked again once locked), or None."""
    def done(kind, fold):
        return (kind, fold) in failed or _done(run_state(args.runs_dir, kind, fold,
                                                         args.records_dir))

    for kind, fold in PLAN:
        if done(kind, fold):
            continue
        lock = _try_lock(args.runs_dir, kind, fold)
        if lock is None:
            continue
        if done(kind, fold):
            lock.close()
            continue
        return kind, fold, lock
    return None


def worker(number, args, failed, rescan_seconds=5.0):
    """Takes the first run that is neither finished, locked nor failed in this queue, until
    none is left (looking twice before leaving: `status` holds each lock for a moment)."""
    log_path = os.path.join(args.logs, f"queue_worker{number}.log")
    with open(log_path, "a", encoding="utf-8") as log:
        while True:
            taken = _next_run(args, failed)
            if taken is None:
                time.sleep(rescan_seconds)
                taken = _next_run(args, failed)
            if taken is None:
                return
            kind, fold, lock = taken
            with lock:  # Held while it records too: no other worker records the same fold's run.
                if _train_one(kind, fold, args, log, lock) != 0:
                    failed.add((kind, fold))
                    continue
                _record(fold, args, log)


def _record(fold, args, log):
    """`isbi2015_records.py save` for the fold, with this checkout's keraslm: records every
    configuration the finished run completes (commit them: run folders can be lost)."""
    command = [sys.executable, os.path.join(REPO, "experiments", "isbi2015_records.py"), "save",
               "--runs-dir", args.runs_dir, "--records-dir", args.records_dir, "--folds", str(fold),
               "--dataset-root", args.dataset_root]
    print(f"{time.strftime('%H:%M:%S')} records of fold {fold}: {shlex.join(command)}", file=log,
          flush=True)
    code = subprocess.call(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=log,
                           stderr=log, preexec_fn=_die_with_parent)
    print(f"{time.strftime('%H:%M:%S')} records of fold {fold}: exit {code}", file=log, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("command", choices=("status", "train", "commands"),
                        help="status: the table of runs; train: work the queue; commands: "
                             "print the train.py command of every run left")
    parser.add_argument("--workers", type=int, default=2,
                        help="runs trained side by side (default: 2, one per core here)")
    parser.add_argument("--runs-dir", default=RUNS_DIR)
    parser.add_argument("--records-dir", default=RECORDS_DIR,
                        help="the held-out predictions' records (isbi2015_records.py): a run "
                             "whose configurations are all recorded here is not trained again")
    parser.add_argument("--dataset-root",
                        default=os.path.join(REPO, "..", "shared", "data", "isbi2015-train"))
    parser.add_argument("--mean-labels-root", default="/work/isbi2015_mean_labels",
                        help="the mean-label copy of the dataset (experiments/"
                             "isbi2015_mean_labels.py --output-dir DIR)")
    parser.add_argument("--worktree", default=REPO,
                        help="the checkout train.py runs from (a pinned `git worktree add "
                             "--detach DIR COMMIT`, so that work on main does not change a "
                             "running job; default: this one)")
    parser.add_argument("--output-dir",
                        help="status: also write the table (table.md, results.json) here")
    parser.add_argument("--logs", default="/work/runs_logs", help="the workers' log folder")
    args = parser.parse_args(argv)
    args.dataset_root = os.path.abspath(args.dataset_root)
    args.worktree = os.path.abspath(args.worktree)
    if args.command == "status":
        lines = status_lines(args.runs_dir, records_dir=args.records_dir)
        if args.output_dir:
            from keraslm.experiments.runs import write_experiment
            from keraslm.precision import describe_machine

            states = [dict(run_state(args.runs_dir, kind, fold, args.records_dir),
                           run=run_name(kind, fold)) for kind, fold in PLAN]
            done = sum(_done(state) for state in states)
            lines = [f"State on {time.strftime('%Y-%m-%d %H:%M %Z')}: {done} of {len(PLAN)} "
                     f"runs finished or recorded. Training hours as recorded in the run folders (wall time "
                     f"of the training, with whatever else ran beside it); this machine: "
                     f"{describe_machine()}.", ""] + lines
            write_experiment(args.output_dir, lines, {"runs": states},
                             "experiments/isbi2015_queue.py",
                             argv if argv is not None else sys.argv[1:])
        try:
            print("\n".join(lines), flush=True)
        except BrokenPipeError:  # `status | head`: the reader left; not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.command == "commands":
        for kind, fold in PLAN:
            if not _done(run_state(args.runs_dir, kind, fold, args.records_dir)):
                print(shlex.join(train_command(kind, fold, args.runs_dir, args.dataset_root,
                                               args.mean_labels_root)))
        return 0
    if any(KINDS[kind][1] and not _done(run_state(args.runs_dir, kind, fold, args.records_dir))
           for kind, fold in PLAN) and not os.path.isfile(
               os.path.join(args.mean_labels_root, "landmarks.csv")):
        parser.error(f"no {args.mean_labels_root}/landmarks.csv: write it first (python "
                     f"experiments/isbi2015_mean_labels.py --output-dir {args.mean_labels_root})")
    if not os.path.isfile(os.path.join(args.worktree, "train.py")):
        parser.error(f"--worktree {args.worktree} holds no train.py: a checkout of keraslm is "
                     "needed (git worktree add --detach DIR COMMIT)")
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more. Received: {args.workers}")
    os.makedirs(args.logs, exist_ok=True)
    # A background job: the lowest priority, for this process and its scheduler group (Linux).
    os.nice(19)
    try:
        with open("/proc/self/autogroup", "w", encoding="utf-8") as handle:
            handle.write("19")
    except OSError:
        pass
    failed = set()
    threads = [threading.Thread(target=worker, args=(n, args, failed)) for n in
               range(1, args.workers + 1)]
    for thread in threads:
        thread.start()
        time.sleep(1)  # the first worker takes its lock before the next looks
    for thread in threads:
        thread.join()
    print("\n".join(status_lines(args.runs_dir, records_dir=args.records_dir)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
