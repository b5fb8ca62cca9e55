"""
Train the benchmark matrix: (algorithm, env, seed) cells, each run the way users run it, one small result file per cell.

    python benchmarks/matrix.py --preset classic --workers 1          # classic control, 4 algorithms x 5 seeds
    python benchmarks/matrix.py --preset mujoco --workers 2           # MuJoCo v5, 1M steps, 3 seeds
    python benchmarks/matrix.py --preset atari --workers 2            # the paper's 7 Atari games, 2M steps, resumable
    python benchmarks/matrix.py --algos trpo_ext sb3-contrib --envs Acrobot-v1 --seeds 0 1 2 --dry-run

Algorithms: ``trpo_ext``, ``natural_pg`` and ``vine_trpo`` run our zoo entry point with our YAML
(``python -m sb3_trpo_ext.train --algo KEY ...``, config ``hyperparams/KEY.yml``); ``sb3-contrib`` runs rl-zoo3's own
``python -m rl_zoo3.train --algo trpo ...`` with rl-zoo3's ``trpo.yml``, or, for the MuJoCo v5 ids that file lacks,
``benchmarks/matrix_configs/trpo_contrib.yml`` (rl-zoo3's MuJoCo v4 settings carried to the v5 ids).

Every cell: ``--seed S -n BUDGET --eval-freq F --eval-episodes 10 --num-threads 1`` (OMP_NUM_THREADS=1), so rl-zoo3's
EvalCallback runs 10 deterministic episodes every F steps and writes ``evaluations.npz``. The runner then writes
``benchmarks/results/matrix/{algo}/{env}/seed_{S}.json``, a result file of ``reporting/results_io.py`` (machine,
date, commit, versions and the runner's command; its data: the steps, mean and std of the evaluation return at each
step, wall seconds, the YAML and the cell's training command) and deletes the run's logs (``benchmarks/output/matrix/``).
The algorithms, presets, YAML entries and commands of the cells are ``benchmarks/matrix_cells.py``'s.

Long cells checkpoint (``--checkpoint-freq N``, the ``atari`` preset's 50K steps, every Atari cell): their training
runs with ``--checkpoint-freq N --resume`` (:mod:`sb3_trpo_ext.zoo.resume`) and keeps its log folder until the result
is written, so a runner started again with the same command (after a kill, or the end of a session) resumes each
unfinished cell from its last checkpoint instead of starting over; the result then says at which steps the cell was
resumed (``resumed_at``), and its ``wall_s`` adds the training seconds before the resumed checkpoint. sb3-contrib cells
that checkpoint run rl-zoo3's ``--algo trpo`` through our entry point (rl-zoo3's own train cannot resume).

An Atari cell's result also records the full games its training envs played (``episodes``: the step at which each
ended and its unclipped score, from the Monitor, which rl-zoo3 puts below AtariWrapper, so that its episodes are whole
games with the raw score; and ``last_100_mean``, the Atari score: the mean of the last 100).

Cells whose JSON exists are skipped, and a lock file (``seed_{S}.json.lock``, holding the runner's pid and host) keeps
two runner processes off the same cell, so the matrix can be filled over several sittings and by several processes.
A lock left by a runner that died on this host is taken over. Stop a runner with SIGTERM or Ctrl-C: its training
processes are stopped and its locks removed.

VineTRPO counts branch steps in its timesteps but calls callbacks on trunk steps only: its ``--eval-freq`` is the
requested F scaled by the trunk's share of an iteration's simulator steps (from its YAML entry), so that it too is
evaluated about every F counted steps, and at most once per iteration (at the end of a trunk, before that
iteration's update).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

if not __package__:  # run as a file, python benchmarks/matrix.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.matrix_cells import ALGOS, LOGS, PRESETS, RESULTS, ROOT, Cell, config_path, is_atari, make_cells
from reporting.results_io import command_line, now, write_result
from sb3_trpo_ext.zoo.resume import process_alive

LAST_GAMES = 100
"""The Atari score of a run: the mean score of its last 100 full games."""

# ---------------------------------------------------------------------------------------------------------------------
# Locks and result files


def try_lock(path: str) -> bool:
    """
    Create the cell's lock file (atomically, ``O_EXCL``). A lock of a dead process on this host is taken over.

    :return: whether this process now holds the lock
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not stale_lock(path):
                return False
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": now()}, f)
        return True
    return False


def stale_lock(path: str) -> bool:
    """A lock written on this host by a process that no longer runs (an unreadable lock is not stale)."""
    try:
        with open(path) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return False
    return owner.get("host") == socket.gethostname() and not process_alive(int(owner.get("pid", -1)))


def cell_state(cell: Cell) -> str:
    """``done`` (result file present), ``locked`` (another live runner has it) or ``todo``."""
    if os.path.exists(cell.result_path):
        return "done"
    if os.path.exists(cell.lock_path) and not stale_lock(cell.lock_path):
        return "locked"
    return "todo"


# ---------------------------------------------------------------------------------------------------------------------
# Running


class Runner:
    """Runs cells, keeps track of its training processes so that a signal stops them and frees their locks."""

    def __init__(self, runner_command: str, quiet: bool = False) -> None:
        self.runner_command = runner_command
        self.quiet = quiet
        self.processes: set[subprocess.Popen] = set()
        self.mutex = threading.Lock()
        self.stopping = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", flush=True)

    def stop(self) -> None:
        self.stopping = True
        with self.mutex:
            for process in self.processes:
                if process.poll() is None:
                    process.terminate()

    def run(self, cell: Cell) -> str:
        """
        Train one cell unless it is done or held by another runner.

        :return: ``done`` / ``locked`` (skipped), ``ok`` (result written) or ``failed``
        """
        if self.stopping:
            return "stopped"
        if os.path.exists(cell.result_path):
            return "done"
        if not try_lock(cell.lock_path):
            return "locked"
        try:
            if os.path.exists(cell.result_path):  # finished by another runner between the check and the lock
                return "done"
            return self.train(cell)
        finally:
            try:
                os.remove(cell.lock_path)
            except FileNotFoundError:
                pass

    def train(self, cell: Cell) -> str:
        """
        Train one cell in its own process, from its last checkpoint if it has one; write its result file (``data``:
        :func:`cell_data`; ``command``: this runner's), then delete its logs.

        :return: ``ok``, ``failed`` (log kept) or ``stopped`` (log kept)
        """
        resumed = cell.resumable()
        if resumed is None:
            shutil.rmtree(cell.log_dir, ignore_errors=True)  # leftovers of an interrupted run without a checkpoint
            os.makedirs(cell.log_dir)
            self.say(f"start {cell.algo} {cell.env} seed {cell.seed}: {cell.display_command()}")
        else:
            self.say(f"resume {cell.algo} {cell.env} seed {cell.seed} at {resumed.steps:,} steps: {cell.display_command()}")
        earlier = resumed.state.elapsed_s if resumed is not None else 0.0
        log_file = os.path.join(cell.log_dir, "train.log")
        start = time.time()
        returncode = self.run_process(cell, log_file)
        wall = earlier + time.time() - start
        if self.stopping:
            self.say(f"stopped {cell.algo} {cell.env} seed {cell.seed} (no result written)")
            return "stopped"
        evaluations = glob.glob(os.path.join(cell.log_dir, "*", f"{cell.env}_*", "evaluations.npz"))
        if returncode != 0 or len(evaluations) != 1:
            with open(log_file, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            self.say(f"FAILED {cell.algo} {cell.env} seed {cell.seed} (exit {returncode}; log kept: {log_file}):\n{tail}")
            return "failed"
        data = cell_data(cell, evaluations[0], wall)
        write_result(cell.result_path, data, command=self.runner_command)
        shutil.rmtree(cell.log_dir, ignore_errors=True)
        final = data["mean"][-1] if data["mean"] else float("nan")
        self.say(
            f"done  {cell.algo} {cell.env} seed {cell.seed}: final {final:.1f} at {data['steps'][-1]:,} steps, "
            f"{wall:.0f} s -> {cell.result_path}"
        )
        return "ok"

    def run_process(self, cell: Cell, log_file: str) -> int:
        """Run the cell's training command (one thread per library), its output into ``log_file``; return its exit code."""
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        with open(log_file, "a") as log:  # a resumed cell's log goes on
            process = subprocess.Popen(cell.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            with self.mutex:
                self.processes.add(process)
            try:
                return process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                with self.mutex:
                    self.processes.discard(process)


def cell_data(cell: Cell, evaluations: str, wall: float) -> dict[str, Any]:
    """
    :param cell: the cell
    :param evaluations: its ``evaluations.npz`` (rl-zoo3's EvalCallback)
    :param wall: seconds its training took
    :return: the result's ``data``: the cell, the mean and std of the evaluation return at each evaluation, the YAML
        it read and its training command; for a resumed cell the steps it was resumed at; for an Atari cell its full
        games (:func:`full_games`)
    """
    found = np.load(evaluations)
    returns = np.asarray(found["results"], dtype=float)
    data = {
        "algo": cell.algo,
        "env": cell.env,
        "seed": cell.seed,
        "budget": cell.budget,
        "eval_freq": cell.eval_freq,
        "eval_episodes": int(returns.shape[1]),
        "deterministic_eval": not is_atari(cell.env),  # rl-zoo3's EvalCallback setting
        "steps": [int(step) for step in found["timesteps"]],
        "mean": [round(float(value), 4) for value in returns.mean(axis=1)],
        "std": [round(float(value), 4) for value in returns.std(axis=1)],
        "wall_s": round(wall, 1),
        "config": config_path(cell.algo, cell.env) or "rl_zoo3/hyperparams/trpo.yml",
        "command": cell.display_command(),
    }
    return data | resume_data(cell, os.path.dirname(evaluations))


def resume_data(cell: Cell, run_dir: str) -> dict[str, Any]:
    """
    :param cell: the cell
    :param run_dir: its run folder
    :return: ``checkpoint_freq`` and, if the run was resumed, ``resumed_at`` (the steps of the checkpoints it was
        resumed from) for a cell that checkpoints; an Atari cell's ``episodes`` and ``last_100_mean``
    """
    if cell.checkpoint_freq <= 0:
        return {}
    from sb3_trpo_ext.zoo.resume import latest_checkpoint

    data: dict[str, Any] = {"checkpoint_freq": cell.checkpoint_freq}
    final = latest_checkpoint(run_dir)
    if final is not None and final.state.resumed_at:
        data["resumed_at"] = final.state.resumed_at
    if is_atari(cell.env):
        data |= full_games(run_dir)
    return data


def full_games(run_dir: str) -> dict[str, Any]:
    """
    :param run_dir: an Atari run's folder
    :return: ``episodes``: the step count at which each full game of the training envs ended (``steps``) and its
        unclipped score (``scores``), in the order they ended, from the run's episode log (its Monitors' episodes:
        rl-zoo3 wraps each env in a Monitor, then in AtariWrapper, so that a Monitor episode is a whole game, all
        lives, scored before reward clipping); ``last_100_mean``: the mean score of the last 100 (of all, if fewer)
    """
    from sb3_trpo_ext.zoo.resume import EPISODES_FILE, read_episodes

    games = read_episodes(os.path.join(run_dir, EPISODES_FILE))
    scores = [round(game.r, 4) for game in games]
    last = scores[-LAST_GAMES:]
    return {
        "episodes": {"steps": [game.step for game in games], "scores": scores},
        "last_100_mean": round(float(np.mean(last)), 4) if last else None,
    }


def run_cells(cells: Sequence[Cell], workers: int, runner: Runner) -> dict[str, int]:
    """Run the cells with ``workers`` training processes at a time; return how many ended in each state."""
    counts: dict[str, int] = {}
    if workers <= 1:
        outcomes = [runner.run(cell) for cell in cells]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(runner.run, cells))
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a predefined matrix (options below override it)")
    parser.add_argument("--algos", nargs="+", choices=ALGOS, help="algorithms")
    parser.add_argument("--envs", nargs="+", help="environment ids")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds")
    parser.add_argument(
        "--budget", type=int, help="training steps of every cell (default: the preset's, else n_timesteps of the YAML)"
    )
    parser.add_argument("--eval-freq", type=int, help="steps between evaluations (default: budget // 20)")
    parser.add_argument("--workers", type=int, default=1, help="training processes at a time (one torch thread each)")
    parser.add_argument(
        "--checkpoint-freq",
        type=int,
        help="steps between checkpoints of each cell, to resume from after a kill (default: the preset's; 0: none; "
        "Atari cells always checkpoint, every 50K steps by default)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the cells and their commands, train nothing")
    parser.add_argument("--results", default=RESULTS, help="result folder (default: benchmarks/results/matrix)")
    parser.add_argument("--logs", default=LOGS, help="folder of the runs' logs while they train")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS.get(args.preset or "", {})
    algos = args.algos or preset.get("algos")
    envs = args.envs or preset.get("envs")
    seeds = args.seeds if args.seeds is not None else preset.get("seeds")
    if not algos or not envs or seeds is None:
        raise SystemExit("give --preset, or --algos, --envs and --seeds")
    cells = make_cells(
        algos,
        envs,
        seeds,
        budget=args.budget,
        budgets=preset.get("budgets"),
        eval_freq=args.eval_freq,
        results=os.path.abspath(args.results),
        logs=os.path.abspath(args.logs),
        checkpoint_freq=args.checkpoint_freq if args.checkpoint_freq is not None else preset.get("checkpoint_freq"),
    )
    runner_command = command_line() if argv is None else shlex.join(["python", "benchmarks/matrix.py", *argv])
    if args.dry_run:
        for cell in cells:
            state = cell_state(cell)
            resumed = cell.resumable() if state == "todo" else None
            resumes = f" (resumes at {resumed.steps:,} steps)" if resumed is not None else ""
            print(f"[{state:6}] {cell.algo} {cell.env} seed {cell.seed}{resumes}: {cell.display_command()}")
        states = [cell_state(cell) for cell in cells]
        print(f"{len(cells)} cells: " + ", ".join(f"{states.count(s)} {s}" for s in ("done", "locked", "todo")))
        return 0
    runner = Runner(runner_command)

    def on_signal(signum: int, frame: Any) -> None:
        runner.say(f"signal {signum}: stopping the training processes")
        runner.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.say(f"{len(cells)} cells, {args.workers} worker(s): {runner_command}")
    counts = run_cells(cells, args.workers, runner)
    runner.say("finished: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 1 if counts.get("failed") or counts.get("stopped") else 0


if __name__ == "__main__":
    sys.exit(main())
