"""
Train the benchmark matrix: (algorithm, env, seed) cells, each run the way users run it, one small result file per cell.

    python benchmarks/matrix.py --preset classic --workers 1          # classic control, 4 algorithms x 5 seeds
    python benchmarks/matrix.py --preset mujoco --workers 2           # MuJoCo v5, 1M steps, 3 seeds
    python benchmarks/matrix.py --algos trpo_ext sb3-contrib --envs Acrobot-v1 --seeds 0 1 2 --dry-run

Algorithms: ``trpo_ext``, ``natural_pg`` and ``vine_trpo`` run our zoo entry point with our YAML
(``python -m sb3_trpo_ext.train --algo KEY ...``, config ``hyperparams/KEY.yml``); ``sb3-contrib`` runs rl-zoo3's own
``python -m rl_zoo3.train --algo trpo ...`` with rl-zoo3's ``trpo.yml``, or, for the MuJoCo v5 ids that file lacks,
``benchmarks/matrix_configs/trpo_contrib.yml`` (rl-zoo3's MuJoCo v4 settings carried to the v5 ids).

Every cell: ``--seed S -n BUDGET --eval-freq F --eval-episodes 10 --num-threads 1`` (OMP_NUM_THREADS=1), so rl-zoo3's
EvalCallback runs 10 deterministic episodes every F steps and writes ``evaluations.npz``. The runner then writes
``benchmarks/results/matrix/{algo}/{env}/seed_{S}.json`` (steps, mean and std of the evaluation return at each step,
wall seconds, versions, git commit, machine, command) and deletes the run's logs (``benchmarks/output/matrix/``).

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
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_io import git_commit, machine, write_json_atomic  # noqa: E402  (benchmarks/ is not a package)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "matrix")
LOGS = os.path.join(ROOT, "benchmarks", "output", "matrix")
CONTRIB_CONFIG = os.path.join("benchmarks", "matrix_configs", "trpo_contrib.yml")  # relative to ROOT

OURS = ("trpo_ext", "natural_pg", "vine_trpo")
CONTRIB = "sb3-contrib"
EVAL_EPISODES = 10


def action_dimensions(env: str) -> int:
    """``d``: the number of dimensions of the env's Box action space (1 for discrete spaces)."""
    import gymnasium as gym

    import sb3_trpo_ext  # noqa: F401  (registers nothing, but keeps the import order of the zoo entry point)

    space = gym.make(env).action_space
    return int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else 1


def contrib_value(env: str, key: str, default: float) -> float:
    return float(config_entry(CONTRIB, env).get(key, default))


@dataclass(frozen=True)
class Variant:
    """Our algorithm with ``-params`` overrides on top of its YAML entry: one change at a time, for comparisons."""

    base: str
    about: str
    params: Callable[[str], dict[str, Any]]


def _equal_trust_region(env: str) -> dict[str, Any]:
    # sb3-contrib's target_kl bounds the KL averaged over the d action dimensions; ours bounds the whole KL
    return {"target_kl": round(action_dimensions(env) * contrib_value(env, "target_kl", 0.01), 6)}


def _contrib_engine(env: str) -> dict[str, Any]:
    # sb3-contrib's Fisher is ours / d, so its cg_damping is ours / d too: scale both, and use the whole batch
    d = action_dimensions(env)
    return {
        "target_kl": round(d * contrib_value(env, "target_kl", 0.01), 6),
        "cg_damping": round(d * contrib_value(env, "cg_damping", 0.1), 6),
        "fisher_sample_fraction": 1.0,
    }


VARIANTS: dict[str, Variant] = {
    "trpo_ext-equal-tr": Variant(
        "trpo_ext", "target_kl = d x sb3-contrib's (its KL is averaged over the d action dimensions)", _equal_trust_region
    ),
    "trpo_ext-fisher-all": Variant(
        "trpo_ext", "Fisher-vector products on the whole batch", lambda env: {"fisher_sample_fraction": 1.0}
    ),
    "trpo_ext-contrib-engine": Variant(
        "trpo_ext",
        "sb3-contrib's trust region, damping and Fisher batch in ours: target_kl and cg_damping x d, whole-batch Fisher",
        _contrib_engine,
    ),
}
# Class defaults as a user without the zoo runs them (``benchmarks/train_defaults.py``): ``Cls("MlpPolicy", env_id,
# seed=s)``, no YAML, no normalization. ``-0.1.0`` cells are our 0.1.0 defaults given explicitly (the trust region and
# damping on the whole distribution, not scaled by the action dimension), the "before" of the defaults change.
DEFAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "trpo_ext-defaults": ("trpo_ext", {}),
    "natural_pg-defaults": ("natural_pg", {}),
    "vine_trpo-defaults": ("vine_trpo", {}),
    "sb3-contrib-defaults": ("sb3-contrib", {}),
    "trpo_ext-defaults-0.1.0": ("trpo_ext", {"target_kl": 0.01, "cg_damping": 0.1}),
    "trpo_ext-defaults-cg10": ("trpo_ext", {"target_kl": 0.08, "cg_damping": 0.8, "cg_max_steps": 10}),
}
ALGOS = (*OURS, *VARIANTS, CONTRIB, *DEFAULTS)


def base_algo(algo: str) -> str:
    """The algorithm key a cell trains (a variant's base)."""
    if algo in DEFAULTS:
        return DEFAULTS[algo][0]
    return VARIANTS[algo].base if algo in VARIANTS else algo


def variant_params(algo: str, env: str) -> dict[str, Any]:
    """The ``-params`` overrides of a variant cell (none for a plain one)."""
    return VARIANTS[algo].params(env) if algo in VARIANTS else {}


# rl-zoo3 2.9.2's trpo.yml budgets (classic control); MuJoCo v5 at 1M steps
PRESETS: dict[str, dict[str, Any]] = {
    "classic": {
        "algos": ["trpo_ext", "natural_pg", "vine_trpo", CONTRIB],
        "envs": ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0"],
        "seeds": [0, 1, 2, 3, 4],
        "budgets": {"CartPole-v1": 100_000, "Acrobot-v1": 100_000, "Pendulum-v1": 100_000, "MountainCarContinuous-v0": 50_000},
    },
    # issue 19: the class defaults, as users without the zoo run them
    "defaults": {
        "algos": ["trpo_ext-defaults", "sb3-contrib-defaults", "natural_pg-defaults", "vine_trpo-defaults"],
        "envs": [
            "CartPole-v1",
            "Acrobot-v1",
            "Pendulum-v1",
            "Hopper-v5",
            "Walker2d-v5",
            "HalfCheetah-v5",
            "Ant-v5",
            "Swimmer-v5",
            "Pusher-v5",
        ],  # fmt: skip
        "seeds": [0, 1, 2],
        "budgets": {
            "CartPole-v1": 100_000,
            "Acrobot-v1": 100_000,
            "Pendulum-v1": 100_000,
            "Hopper-v5": 500_000,
            "Walker2d-v5": 500_000,
            "HalfCheetah-v5": 500_000,
            "Ant-v5": 500_000,
            "Swimmer-v5": 500_000,
            "Pusher-v5": 500_000,
        },  # fmt: skip
    },
    "mujoco": {
        "algos": ["trpo_ext", "natural_pg", CONTRIB],
        "envs": ["Hopper-v5", "Walker2d-v5", "Swimmer-v5", "HalfCheetah-v5"],
        "seeds": [0, 1, 2],
        "budgets": {"Hopper-v5": 1_000_000, "Walker2d-v5": 1_000_000, "Swimmer-v5": 1_000_000, "HalfCheetah-v5": 1_000_000},
    },
}


# ---------------------------------------------------------------------------------------------------------------------
# Configs and commands


def zoo_trpo_yml() -> str:
    """The path of rl-zoo3's own ``trpo.yml`` (sb3-contrib's TRPO settings)."""
    import rl_zoo3

    return os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", "trpo.yml")


def load_yaml(path: str) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def config_path(algo: str, env: str) -> str | None:
    """
    :return: the YAML the cell's training reads, relative to ROOT where it is ours; ``None`` for rl-zoo3's own
        ``trpo.yml`` (no ``-conf`` on the command line)
    """
    if algo in DEFAULTS:
        return "class defaults"
    if base_algo(algo) in OURS:
        return os.path.join("hyperparams", f"{base_algo(algo)}.yml")
    if algo != CONTRIB:
        raise ValueError(f"unknown algorithm {algo!r}: choose from {', '.join(ALGOS)}")
    if env not in load_yaml(zoo_trpo_yml()) and env in load_yaml(os.path.join(ROOT, CONTRIB_CONFIG)):
        return CONTRIB_CONFIG
    return None


def config_entry(algo: str, env: str) -> dict[str, Any]:
    """The hyperparameters the cell's training uses (its env entry, else ``atari`` for Atari ids, else ``default``)."""
    if algo in DEFAULTS:
        return {}
    path = config_path(algo, env)
    config = load_yaml(os.path.join(ROOT, path) if path is not None else zoo_trpo_yml())
    if env in config:
        return config[env]
    if is_atari(env) and "atari" in config:
        return config["atari"]
    return config.get("default", {})


def is_atari(env: str) -> bool:
    return "NoFrameskip" in env or env.startswith("ALE/")


def default_budget(algo: str, env: str) -> int:
    """The env's ``n_timesteps`` in the YAML the cell reads."""
    return int(float(config_entry(algo, env)["n_timesteps"]))


def default_eval_freq(budget: int) -> int:
    """20 evaluations per run, one at the end of the budget."""
    return max(budget // 20, 1)


def zoo_eval_freq(algo: str, env: str, eval_freq: int) -> int:
    """
    The ``--eval-freq`` to pass for evaluations about every ``eval_freq`` counted steps.

    rl-zoo3's EvalCallback counts callback calls; VineTRPO calls callbacks on trunk steps only but counts trunk and
    branch steps (``n_envs x n_steps + N x K x m`` per iteration), so its frequency is scaled by the trunk's share,
    and at least one trunk (the policy changes once per iteration; an evaluation at the end of a trunk sees the
    policy of the previous update).
    """
    if base_algo(algo) != "vine_trpo" or algo in DEFAULTS:  # train_defaults.py scales the vine's itself
        return eval_freq
    entry = config_entry(algo, env)
    trunk = int(entry.get("n_envs", 1)) * int(entry.get("n_steps", 2048))
    branches = int(entry["n_rollout_states"]) * int(entry["n_actions_per_state"]) * int(entry["rollout_length"])
    # at most one evaluation per iteration: the policy does not change during a trunk
    return max(int(round(eval_freq * trunk / (trunk + branches))), trunk)


@dataclass
class Cell:
    algo: str
    env: str
    seed: int
    budget: int
    eval_freq: int
    results: str = RESULTS
    logs: str = LOGS
    python: str = field(default_factory=lambda: sys.executable)

    @property
    def result_path(self) -> str:
        return os.path.join(self.results, self.algo, self.env, f"seed_{self.seed}.json")

    @property
    def lock_path(self) -> str:
        return self.result_path + ".lock"

    @property
    def log_dir(self) -> str:
        return os.path.join(self.logs, self.algo, self.env, f"seed_{self.seed}")

    def command(self) -> list[str]:
        """The training command (run in ROOT)."""
        if self.algo in DEFAULTS:
            trained, params = DEFAULTS[self.algo]
            command = [self.python, os.path.join("benchmarks", "train_defaults.py"), "--algo", trained, "--env", self.env]
            command += ["--seed", str(self.seed), "-n", str(self.budget), "--eval-freq", str(self.eval_freq)]
            command += ["--eval-episodes", str(EVAL_EPISODES), "-f", self.log_dir]
            if params:
                command += ["-params", *(f"{key}:{value}" for key, value in params.items())]
            return command
        if base_algo(self.algo) in OURS:
            head = [self.python, "-m", "sb3_trpo_ext.train", "--algo", base_algo(self.algo)]
        else:
            head = [self.python, "-m", "rl_zoo3.train", "--algo", "trpo"]
        command = head + [
            "--env",
            self.env,
            "--seed",
            str(self.seed),
            "-n",
            str(self.budget),
            "--eval-freq",
            str(zoo_eval_freq(self.algo, self.env, self.eval_freq)),
            "--eval-episodes",
            str(EVAL_EPISODES),
            "--num-threads",
            "1",
            "-f",
            self.log_dir,
        ]
        if self.algo == CONTRIB:
            conf = config_path(self.algo, self.env)
            if conf is not None:
                command += ["-conf", conf]
        overrides = variant_params(self.algo, self.env)
        if overrides:
            command += ["-params", *(f"{key}:{value}" for key, value in overrides.items())]
        return command

    def display_command(self) -> str:
        """The command as a user types it: ``python`` and paths relative to the repository root."""
        parts = ["python" if part == self.python else part for part in self.command()]
        parts = [os.path.relpath(part, ROOT) if os.path.isabs(part) and part.startswith(ROOT) else part for part in parts]
        return shlex.join(parts)


def make_cells(
    algos: Sequence[str],
    envs: Sequence[str],
    seeds: Sequence[int],
    budget: int | None = None,
    budgets: dict[str, int] | None = None,
    eval_freq: int | None = None,
    results: str = RESULTS,
    logs: str = LOGS,
) -> list[Cell]:
    """
    The cells in running order: seed by seed (every algorithm and env of seed 0 first), so a partly filled matrix
    already compares every algorithm.

    :param budget: steps for every cell; else ``budgets[env]``; else the env's ``n_timesteps`` in the cell's YAML
    :param eval_freq: steps between evaluations; default ``budget // 20``
    """
    cells = []
    for seed in seeds:
        for env in envs:
            for algo in algos:
                if algo not in ALGOS:
                    raise SystemExit(f"unknown algorithm {algo!r}: choose from {', '.join(ALGOS)}")
                steps = budget or (budgets or {}).get(env) or default_budget(algo, env)
                freq = eval_freq or default_eval_freq(steps)
                cells.append(Cell(algo, env, seed, steps, freq, results=results, logs=logs))
    return cells


# ---------------------------------------------------------------------------------------------------------------------
# Locks and result files


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    return owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid", -1)))


def cell_state(cell: Cell) -> str:
    """``done`` (result file present), ``locked`` (another live runner has it) or ``todo``."""
    if os.path.exists(cell.result_path):
        return "done"
    if os.path.exists(cell.lock_path) and not stale_lock(cell.lock_path):
        return "locked"
    return "todo"


# ---------------------------------------------------------------------------------------------------------------------
# Metadata


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of the packages in the training environment."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("sb3-trpo-ext", "stable-baselines3", "sb3-contrib", "rl-zoo3", "torch", "gymnasium", "mujoco"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    with open(os.path.join(ROOT, "sb3_trpo_ext", "version.txt")) as f:
        found["sb3_trpo_ext (source)"] = f.read().strip()
    return found


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
        shutil.rmtree(cell.log_dir, ignore_errors=True)  # leftovers of an interrupted run
        os.makedirs(cell.log_dir)
        log_file = os.path.join(cell.log_dir, "train.log")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.say(f"start {cell.algo} {cell.env} seed {cell.seed}: {cell.display_command()}")
        start = time.time()
        with open(log_file, "w") as log:
            process = subprocess.Popen(cell.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            with self.mutex:
                self.processes.add(process)
            try:
                returncode = process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                with self.mutex:
                    self.processes.discard(process)
        wall = time.time() - start
        if self.stopping:
            self.say(f"stopped {cell.algo} {cell.env} seed {cell.seed} (no result written)")
            return "stopped"
        evaluations = glob.glob(os.path.join(cell.log_dir, "*", f"{cell.env}_*", "evaluations.npz"))
        if returncode != 0 or len(evaluations) != 1:
            with open(log_file, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            self.say(f"FAILED {cell.algo} {cell.env} seed {cell.seed} (exit {returncode}; log kept: {log_file}):\n{tail}")
            return "failed"
        data = np.load(evaluations[0])
        returns = np.asarray(data["results"], dtype=float)
        result = {
            "algo": cell.algo,
            "env": cell.env,
            "seed": cell.seed,
            "budget": cell.budget,
            "eval_freq": cell.eval_freq,
            "eval_episodes": int(returns.shape[1]),
            "deterministic_eval": not is_atari(cell.env),  # rl-zoo3's EvalCallback setting
            "steps": [int(step) for step in data["timesteps"]],
            "mean": [round(float(value), 4) for value in returns.mean(axis=1)],
            "std": [round(float(value), 4) for value in returns.std(axis=1)],
            "wall_s": round(wall, 1),
            "date": now(),
            "machine": machine(),
            "versions": versions(),
            "git": git_commit(),
            "config": config_path(cell.algo, cell.env) or "rl_zoo3/hyperparams/trpo.yml",
            "command": cell.display_command(),
            "runner_command": self.runner_command,
        }
        write_json_atomic(cell.result_path, result)
        shutil.rmtree(cell.log_dir, ignore_errors=True)
        final = result["mean"][-1] if result["mean"] else float("nan")
        self.say(
            f"done  {cell.algo} {cell.env} seed {cell.seed}: final {final:.1f} at {result['steps'][-1]:,} steps, "
            f"{wall:.0f} s -> {cell.result_path}"
        )
        return "ok"


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
    )
    runner_command = shlex.join(["python", "benchmarks/matrix.py", *(sys.argv[1:] if argv is None else argv)])
    if args.dry_run:
        for cell in cells:
            print(f"[{cell_state(cell):6}] {cell.algo} {cell.env} seed {cell.seed}: {cell.display_command()}")
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
