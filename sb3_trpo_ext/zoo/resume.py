"""
Long runs that survive a stopped process: checkpoints of a whole zoo run, and resuming a run from its last one.

``python -m sb3_trpo_ext.train ... --checkpoint-freq N`` writes a checkpoint into the run's folder
(``logs/{algo}/{env}_{id}/checkpoint_{steps}/``) at the first update boundary after every ``N`` steps (steps as ``-n``
counts them) and once more at the end. ``--resume`` continues the latest run of the algorithm and env under ``-f``
from its last checkpoint (or starts a new run when that run has none), ``--resume-from RUN_FOLDER`` a given run: the
same command, run again after a kill, continues where the last checkpoint left off, in the same folder, until ``-n``
steps in all.

A checkpoint (:class:`Checkpoint`) holds:

- ``model.zip``: the model as SB3 saves it (parameters, optimizer state, ``num_timesteps``, ``_n_updates``,
  ``_episode_num``, the episode info buffer behind ``rollout/ep_rew_mean``), and the training VecNormalize statistics
  (``{env}/vecnormalize.pkl``, where rl-zoo3's ``-i`` looks for them), if any;
- ``run/``: copies of the run folder's files that grow during training: the Monitor files (``*.monitor.csv``),
  ``evaluations.npz``, ``best_model.zip`` (and the VecNormalize statistics saved with it) and ``episodes.csv``;
- ``rng.pkl``: the states of Python's ``random``, NumPy's global generator, torch's (CPU and CUDA) and, for
  ``vine_trpo``, the branch phase's generator;
- ``state.json`` (:class:`CheckpointState`): the step count, the callbacks' step count, the budget, the training
  seconds so far and the steps at which the run was resumed before.

It is written into a temporary folder, then renamed: a kill while writing leaves the previous checkpoint whole. While
a process trains a run with checkpoints, the run folder names it (``.training.json``, :func:`claim_run`): a second
process started on the same run stops with :class:`RunInUseError` instead of writing the same files (a killed
process's claim is taken over).

**Where in the loop.** A checkpoint is written when a rollout starts (``on_rollout_start``), that is after the update
made from the previous rollout: its model holds every update of the steps it counts. (At ``on_rollout_end`` the
steps of the rollout just collected are counted, but ``train()`` has not used them yet: a resumed run would count
them without ever updating on them.)

**On resume**, in the freshly built envs: the run folder's files are put back as the checkpoint has them (rows the
Monitor wrote after the checkpoint are dropped; later rows are appended, the time column continuing from the run's
start), the model is loaded from the checkpoint (with the settings it was started with: YAML changes since are not
applied), the EvalCallback gets its evaluations so far, every callback its step count (so that evaluations and
rl-zoo3's ``--save-freq`` checkpoints keep their schedule), and ``learn`` runs the remaining steps with
``reset_num_timesteps=False``: the run ends at ``-n`` steps as an uninterrupted one does (whole rollouts, as SB3
rounds). At the first rollout start, where the checkpoint was written, the random generators are put back.

What is not restored: the envs' episodes in progress at the checkpoint (the envs restart with fresh episodes, seeded
with ``seed + steps``; the lost partial episodes have no Monitor row, their steps are counted), the evaluation env's
state, and the state of callbacks other than rl-zoo3's EvalCallback beyond their step count. On SB3's rollout loop
(sb3-contrib, and our algorithms on SB3's rollout path), nothing random happens between an update and
``on_rollout_start`` (gSDE's noise reset aside), so a resumed run on an env that restarts where it stood (episodes
ending at the checkpoint) reproduces the uninterrupted run exactly. Our fast rollout path draws a rollout's sampling
noise before ``on_rollout_start``: there the first resumed rollout samples other actions, and the generators agree
with the uninterrupted run's again from that rollout's start.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import pickle
import random
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch as th
from huggingface_sb3 import EnvironmentName
from rl_zoo3.utils import ALGOS, get_latest_run_id
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.zoo.exp_manager import ExperimentManager

CHECKPOINT_PREFIX = "checkpoint_"
"""A checkpoint's folder in its run's folder: ``checkpoint_{steps:012d}``."""
MODEL_FILE = "model.zip"
STATE_FILE = "state.json"
RNG_FILE = "rng.pkl"
RUN_FILES = "run"
"""The checkpoint's subfolder of run-folder copies."""
EPISODES_FILE = "episodes.csv"
"""The run's episode log (:class:`EpisodeEnd` rows), in the run folder."""
VECNORMALIZE_FILE = "vecnormalize.pkl"
OWNER_FILE = ".training.json"
"""In a run folder while a process trains it with checkpoints: that process's pid and host (:func:`claim_run`)."""
RUNTIME_KEYS = ("branch_pool",)
"""Constructor keywords a zip does not hold (live objects), passed again from the YAML entry when a run resumes."""

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ---------------------------------------------------------------------------------------------------------------------
# What a checkpoint holds


class EpisodeEnd(NamedTuple):
    """One Monitor episode of a training env, with the step count at which it ended."""

    step: int
    """The run's step count (``num_timesteps``) after the step that ended the episode."""
    env: int
    """The index of the env in the training VecEnv."""
    r: float
    """The Monitor's return (below rl-zoo3's ``env_wrapper``: for Atari, the full game's unclipped score)."""
    l: int  # noqa: E741 - the Monitor's name
    """The Monitor's length (for Atari, in emulator frames)."""
    t: float
    """The Monitor's time (seconds since the Monitor file was started)."""


@dataclass
class CheckpointState:
    """``state.json``: the counters a resumed run continues from."""

    num_timesteps: int
    """The model's step count at the checkpoint."""
    n_calls: int
    """How many times the callbacks were called (once per training step of the VecEnv) up to the checkpoint."""
    n_envs: int
    """The number of training envs."""
    total_timesteps: int
    """The run's budget when the checkpoint was written (``-n``)."""
    checkpoint_freq: int
    """Steps between checkpoints."""
    elapsed_s: float
    """Seconds of training up to the checkpoint, over every process that ran it (lost stretches not counted)."""
    resumed_at: list[int] = field(default_factory=list)
    """The step counts at which the run was resumed before this checkpoint."""
    finished: bool = False
    """Whether the run had its whole budget (the checkpoint written when training ended)."""
    n_updates: int = 0
    """The model's ``_n_updates`` (for reference: the model zip holds it)."""
    time: float = 0.0
    """When the checkpoint was written (seconds since the epoch)."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder written by :class:`ResumeCallback`."""

    path: Path

    @property
    def steps(self) -> int:
        """The step count in the folder's name."""
        match = _CHECKPOINT_NAME.match(self.path.name)
        assert match is not None, f"{self.path} is not a checkpoint folder"
        return int(match.group(1))

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def state(self) -> CheckpointState:
        return CheckpointState(**json.loads((self.path / STATE_FILE).read_text()))

    def rng_states(self) -> dict[str, Any]:
        """:return: the random generators' states (see :func:`rng_states`)"""
        with open(self.path / RNG_FILE, "rb") as file:
            return pickle.load(file)

    def episodes(self) -> list[EpisodeEnd]:
        """:return: the episode log up to the checkpoint"""
        return read_episodes(self.path / RUN_FILES / EPISODES_FILE)

    def load_model(self, algorithm_class: type[BaseAlgorithm], env: VecEnv, **kwargs: Any) -> BaseAlgorithm:
        """
        :param algorithm_class: the run's algorithm
        :param env: the freshly built training env (VecNormalize statistics already loaded, see :meth:`vecnormalize_path`)
        :param kwargs: keyword arguments of ``load`` (``device``, ``tensorboard_log``, ``verbose``, live objects the zip
            does not hold)
        :return: the model as it was at the checkpoint, on ``env``; the env will be reset at the start of ``learn``
        """
        return algorithm_class.load(self.model_path, env=env, **kwargs)

    def vecnormalize_path(self, env_name: str) -> Path:
        """The training env's VecNormalize statistics (rl-zoo3's ``-i`` layout: next to the zip, in ``{env}/``)."""
        return self.path / env_name / VECNORMALIZE_FILE

    def restore_run_files(self, run_dir: Path) -> None:
        """
        Put the run folder's growing files back as they were at the checkpoint: the copies replace the files, and files
        written after the checkpoint that it has no copy of are removed.

        :param run_dir: the run folder
        """
        copies = self.path / RUN_FILES
        for live in run_files(run_dir):
            if not (copies / live.relative_to(run_dir)).exists():
                live.unlink()
        for copy in run_files(copies):
            target = run_dir / copy.relative_to(copies)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(copy, target)

    def restore_evaluations(self, eval_callback: EvalCallback) -> None:
        """
        Give rl-zoo3's EvalCallback its evaluations up to the checkpoint (and its best and last mean return), so that
        it appends to them and saves ``best_model.zip`` only for a better mean, as it would have without the stop.

        :param eval_callback: the callback
        """
        path = self.path / RUN_FILES / "evaluations.npz"
        if not path.exists():
            return
        found = np.load(path)
        eval_callback.evaluations_timesteps = [int(step) for step in found["timesteps"]]
        eval_callback.evaluations_results = [list(row) for row in found["results"]]
        eval_callback.evaluations_length = [list(row) for row in found["ep_lengths"]]
        if "successes" in found:
            eval_callback.evaluations_successes = [list(row) for row in found["successes"]]
        if len(eval_callback.evaluations_results) > 0:
            means = [float(np.mean(row)) for row in eval_callback.evaluations_results]
            eval_callback.best_mean_reward, eval_callback.last_mean_reward = max(means), means[-1]


def run_files(folder: Path) -> list[Path]:
    """
    :param folder: a run folder (or a checkpoint's copy of one)
    :return: its files that grow during training: the Monitor files, ``evaluations.npz``, ``best_model.zip``, the
        VecNormalize statistics rl-zoo3 saves with it, and the episode log
    """
    found = sorted(folder.glob("*.monitor.csv"))
    named = (folder / "evaluations.npz", folder / "best_model.zip", folder / EPISODES_FILE)
    found += [path for path in named if path.is_file()]
    found += sorted(folder.glob(f"*/{VECNORMALIZE_FILE}"))
    return [path for path in found if not path.parent.name.startswith((CHECKPOINT_PREFIX, f".{CHECKPOINT_PREFIX}"))]


def checkpoints(run_dir: Path | str) -> list[Checkpoint]:
    """:return: the run folder's checkpoints (complete ones: a checkpoint is renamed into place once written), oldest first"""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [Checkpoint(path) for path in run_dir.iterdir() if _CHECKPOINT_NAME.match(path.name) and path.is_dir()]
    return sorted((each for each in found if (each.path / STATE_FILE).is_file()), key=lambda each: each.steps)


def latest_checkpoint(run_dir: Path | str) -> Checkpoint | None:
    """:return: the run folder's last checkpoint, or None"""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def latest_run(log_folder: Path | str, algo: str, env_id: str) -> Path | None:
    """
    :param log_folder: rl-zoo3's ``-f``
    :param algo: the algorithm key
    :param env_id: the env id
    :return: the run folder rl-zoo3 wrote last for them (``{log_folder}/{algo}/{env}_{highest id}``), or None
    """
    log_path = os.path.join(str(log_folder), algo, "")
    env_name = str(EnvironmentName(env_id))
    run_id = get_latest_run_id(log_path, env_name)
    return Path(log_path, f"{env_name}_{run_id}") if run_id > 0 else None


def resumable_checkpoint(log_folder: Path | str, algo: str, env_id: str) -> Checkpoint | None:
    """What ``--resume`` would resume: the last checkpoint of the latest run (None: it would start a new run)."""
    run_dir = latest_run(log_folder, algo, env_id)
    return latest_checkpoint(run_dir) if run_dir is not None else None


class RunInUseError(RuntimeError):
    """A run folder that another live process trains."""


def process_alive(pid: int) -> bool:
    """:return: whether a process with this pid runs on this host"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_owner(run_dir: Path | str) -> dict[str, Any] | None:
    """
    :param run_dir: a run folder
    :return: the record (``pid``, ``host``) of the other process that trains it, if one does: one that runs on this
        host, or any on another host (it cannot be checked from here); None if none (or a dead one)
    """
    try:
        owner = json.loads(Path(run_dir, OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid, host = int(owner.get("pid", -1)), owner.get("host")
    if host == socket.gethostname() and (pid == os.getpid() or not process_alive(pid)):
        return None
    return owner


def claim_run(run_dir: Path) -> None:
    """
    Record this process as the one that trains the run folder (:data:`OWNER_FILE`, removed at exit; a killed process's
    is taken over), so that a second process started on the same run (a runner restarted while its training process
    survived) stops instead of writing the same files.

    :param run_dir: the run folder (created if need be)
    :raises RunInUseError: when another live process trains it
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / OWNER_FILE
    for _ in range(2):
        owner = run_owner(run_dir)
        if owner is not None:
            raise RunInUseError(
                f"{run_dir} is being trained by process {owner.get('pid')} on {owner.get('host')} (see {path}): wait for "
                "it to end or stop it, then resume (delete that file if the process is gone)"
            )
        path.unlink(missing_ok=True)
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another process claimed it in between: look again
            continue
        with os.fdopen(descriptor, "w") as file:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, file)
        atexit.register(release_run, run_dir)
        return
    raise RunInUseError(f"{run_dir}: another process claimed it at the same time")


def release_run(run_dir: Path) -> None:
    """Remove the run folder's :data:`OWNER_FILE` if this process wrote it."""
    path = run_dir / OWNER_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------------------------------
# Random generators, the episode log, the Monitor files


def rng_states(model: BaseAlgorithm | None = None) -> dict[str, Any]:
    """
    :param model: the model, whose own generators are added (``vine_trpo``'s branch phase), or None
    :return: the states of Python's ``random``, NumPy's global generator and torch's (CPU, and CUDA when in use)
    """
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}
    if th.cuda.is_available() and th.cuda.is_initialized():
        states["torch_cuda"] = th.cuda.get_rng_state_all()
    branch_rng = _branch_rng(model)
    if branch_rng is not None:
        states["branch_phase"] = branch_rng.bit_generator.state
    return states


def restore_rng_states(states: dict[str, Any], model: BaseAlgorithm | None = None) -> None:
    """
    Put the generators back in the states :func:`rng_states` returned.

    :param states: the states
    :param model: the model, whose own generators are restored too (those it has by then)
    """
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    th.set_rng_state(states["torch"])
    if "torch_cuda" in states and th.cuda.is_available():
        th.cuda.set_rng_state_all(states["torch_cuda"])
    branch_rng = _branch_rng(model)
    if branch_rng is not None and "branch_phase" in states:
        branch_rng.bit_generator.state = states["branch_phase"]


def _branch_rng(model: BaseAlgorithm | None) -> np.random.Generator | None:
    """VineTRPO's branch-phase generator (its ``branch_runner``, made at the first iteration), if there is one."""
    rng = getattr(getattr(model, "branch_runner", None), "rng", None)
    return rng if isinstance(rng, np.random.Generator) else None


def episode_ends(step: int, infos: Sequence[dict[str, Any]]) -> list[EpisodeEnd]:
    """
    :param step: the step count after the VecEnv's step
    :param infos: the step's infos
    :return: the episodes the step ended, as the training envs' Monitors report them (``info["episode"]``)
    """
    ends = []
    for index, info in enumerate(infos):
        episode = info.get("episode")
        if episode is not None:
            ends.append(EpisodeEnd(step, index, float(episode["r"]), int(episode["l"]), float(episode["t"])))
    return ends


def write_episodes(path: Path, episodes: Iterable[EpisodeEnd]) -> None:
    """Write the episode log (a CSV with a header: ``step,env,r,l,t``), atomically."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(EpisodeEnd._fields)
        writer.writerows(episodes)
    os.replace(temporary, path)


def read_episodes(path: Path | str) -> list[EpisodeEnd]:
    """:return: the episode log :func:`write_episodes` wrote (empty when there is none)"""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return [EpisodeEnd(int(row["step"]), int(row["env"]), float(row["r"]), int(row["l"]), float(row["t"])) for row in rows]


def monitor_start(path: str) -> float:
    """:return: the ``t_start`` in the header line of a Monitor file"""
    with open(path) as file:
        header = file.readline()
    return float(json.loads(header.lstrip("#"))["t_start"])


def continue_monitor(env: gym.Env, wrapper: Callable[[gym.Env], gym.Env] | None = None) -> gym.Env:
    """
    rl-zoo3's ``env_wrapper`` in a resumed run: the Monitor below it (``make_vec_env`` wraps each env in a Monitor,
    then in the wrapper), appending to its restored file, counts its time from the file's start, so that the time
    column goes on growing; then the entry's own wrapper.

    :param env: the Monitor-wrapped env
    :param wrapper: the entry's ``env_wrapper`` (None: none)
    :return: the wrapped env
    """
    if isinstance(env, Monitor) and env.results_writer is not None:
        env.t_start = monitor_start(env.results_writer.file_handler.name)
    return wrapper(env) if wrapper is not None else env


# ---------------------------------------------------------------------------------------------------------------------
# Writing checkpoints


def write_checkpoint(
    model: BaseAlgorithm,
    run_dir: Path,
    state: CheckpointState,
    rng: dict[str, Any],
    env_name: str,
) -> Checkpoint:
    """
    Write a checkpoint into ``run_dir`` atomically (a temporary folder renamed into place), then remove the older ones.

    :param model: the model, at an update boundary
    :param run_dir: the run folder (its growing files are copied, see :func:`run_files`)
    :param state: the counters
    :param rng: the generators' states at the checkpoint
    :param env_name: the env's name in rl-zoo3's paths (the VecNormalize statistics go into ``{env_name}/``)
    :return: the checkpoint
    """
    for leftover in run_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp-*"):  # of processes killed while writing
        shutil.rmtree(leftover, ignore_errors=True)
    name = f"{CHECKPOINT_PREFIX}{state.num_timesteps:012d}"
    temporary = run_dir / f".{name}.tmp-{os.getpid()}"
    temporary.mkdir(parents=True)
    model.save(temporary / MODEL_FILE)
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        (temporary / env_name).mkdir()
        vec_normalize.save(str(temporary / env_name / VECNORMALIZE_FILE))
    for live in run_files(run_dir):
        copy = temporary / RUN_FILES / live.relative_to(run_dir)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(live, copy)
    with open(temporary / RNG_FILE, "wb") as file:
        pickle.dump(rng, file)
    (temporary / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    final = run_dir / name
    if final.exists():  # the same step count again (a finished run's end): move the old one away first
        replaced = run_dir / f".{name}.tmp-old-{os.getpid()}"
        os.rename(final, replaced)
        shutil.rmtree(replaced)
    os.rename(temporary, final)
    for older in checkpoints(run_dir):
        if older.path != final:
            shutil.rmtree(older.path, ignore_errors=True)
    return Checkpoint(final)


class ResumeCallback(BaseCallback):
    """
    Writes a checkpoint (:func:`write_checkpoint`) at the first rollout start (an update boundary) at or after every
    ``checkpoint_freq`` steps, and at the end of training when the budget is reached; keeps the run's episode log
    (``episodes.csv``: the step count at which each training episode ended, with the Monitor's return, length and
    time). Given the checkpoint a run resumes from, it continues its counters and episode log and puts the random
    generators back at the first rollout start.

    :param run_dir: the run folder
    :param checkpoint_freq: steps between checkpoints (0: only the one at the end)
    :param env_name: the env's name in rl-zoo3's paths
    :param resume_from: the checkpoint the run resumes from (None: a new run)
    :param verbose: 1: say when a checkpoint is written
    """

    def __init__(
        self,
        run_dir: Path | str,
        checkpoint_freq: int,
        env_name: str,
        resume_from: Checkpoint | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        self.run_dir = Path(run_dir)
        self.checkpoint_freq = checkpoint_freq
        self.env_name = env_name
        self.episodes: list[EpisodeEnd] = []
        self.last_checkpoint = 0
        """The step count of the last checkpoint written or resumed from."""
        self.elapsed_before = 0.0
        self.resumed_at: list[int] = []
        self.pending_rng: dict[str, Any] | None = None
        """The generators' states to put back at the first rollout start of a resumed run."""
        self.started = time.time()
        self.total_timesteps = 0
        if resume_from is not None:
            self.continue_from(resume_from)

    def continue_from(self, checkpoint: Checkpoint) -> None:
        """:param checkpoint: the checkpoint this run resumes from"""
        state = checkpoint.state
        self.n_calls = state.n_calls
        self.episodes = checkpoint.episodes()
        self.last_checkpoint = state.num_timesteps
        self.elapsed_before = state.elapsed_s
        self.resumed_at = [*state.resumed_at, state.num_timesteps]
        self.pending_rng = checkpoint.rng_states()

    def _init_callback(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _on_training_start(self) -> None:
        self.started = time.time()
        self.total_timesteps = int(self.locals["total_timesteps"])

    def _on_rollout_start(self) -> None:
        if self.pending_rng is not None:  # the resumed run is where its checkpoint was written
            restore_rng_states(self.pending_rng, self.model)
            self.pending_rng = None
        elif self.checkpoint_freq > 0 and self.model.num_timesteps >= self.next_checkpoint:
            self.checkpoint()

    def _on_step(self) -> bool:
        self.episodes += episode_ends(self.model.num_timesteps, self.locals.get("infos", ()))
        return True

    def _on_training_end(self) -> None:
        # rl-zoo3 also calls the first callback's on_training_end (and after an interruption): once, at the budget only
        if self.model.num_timesteps >= self.total_timesteps and self.last_checkpoint != self.model.num_timesteps:
            self.checkpoint(finished=True)

    @property
    def next_checkpoint(self) -> int:
        """The step count from which the next checkpoint is due: the next multiple of ``checkpoint_freq``."""
        return (self.last_checkpoint // self.checkpoint_freq + 1) * self.checkpoint_freq

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, over every process that ran it."""
        return self.elapsed_before + time.time() - self.started

    def checkpoint(self, finished: bool = False) -> Checkpoint:
        """
        Write a checkpoint of the run as it is now (the episode log first, into the run folder).

        :param finished: whether the run has its whole budget
        :return: the checkpoint
        """
        write_episodes(self.run_dir / EPISODES_FILE, self.episodes)
        state = CheckpointState(
            num_timesteps=int(self.model.num_timesteps),
            n_calls=self.n_calls,
            n_envs=self.model.n_envs,
            total_timesteps=self.total_timesteps,
            checkpoint_freq=self.checkpoint_freq,
            elapsed_s=round(self.elapsed, 3),
            resumed_at=self.resumed_at,
            finished=finished,
            n_updates=int(getattr(self.model, "_n_updates", 0)),
            time=time.time(),
        )
        written = write_checkpoint(self.model, self.run_dir, state, rng_states(self.model), self.env_name)
        self.last_checkpoint = state.num_timesteps
        if self.verbose >= 1:
            print(f"Checkpoint at {state.num_timesteps:,} steps: {written.path}")
        return written


def flat_callbacks(callbacks: Iterable[BaseCallback]) -> list[BaseCallback]:
    """:return: the callbacks, CallbackLists replaced by their callbacks (all those SB3 calls at every step)"""
    found: list[BaseCallback] = []
    for callback in callbacks:
        found += flat_callbacks(callback.callbacks) if isinstance(callback, CallbackList) else [callback]
    return found


# ---------------------------------------------------------------------------------------------------------------------
# rl-zoo3


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--checkpoint-freq``, ``--resume`` and ``--resume-from`` to rl-zoo3's train parser."""
    parser.add_argument(
        "--checkpoint-freq",
        type=int,
        default=0,
        help="Write a checkpoint to resume from into the run folder every N steps (as -n counts them: at the first "
        "update after each multiple of N) and at the end; 0: none (default; a resumed run keeps its frequency)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        default=False,
        help="Continue the latest run of this --algo and --env under -f from its last checkpoint, in its folder, "
        "until -n steps in all (a new run if it has no checkpoint)",
    )
    parser.add_argument(
        "--resume-from",
        type=str,
        default=None,
        help="Continue this run folder (logs/ALGO/ENV_ID) from its last checkpoint, until -n steps in all",
    )


class _ContinuedModel:
    """The model as rl-zoo3's ``learn`` sees it in a resumed run: ``learn(n)`` continues the step count."""

    def __init__(self, model: BaseAlgorithm) -> None:
        self._model = model

    def learn(self, total_timesteps: int, **kwargs: Any) -> BaseAlgorithm:
        return self._model.learn(total_timesteps, reset_num_timesteps=False, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class ResumableExperimentManager(ExperimentManager):
    """
    Our experiment manager with ``--checkpoint-freq``, ``--resume`` and ``--resume-from`` (see the module's docstring).
    """

    def __init__(self, args: Any, algo: str, env_id: str, log_folder: str, *positional: Any, **kwargs: Any) -> None:
        super().__init__(args, algo, env_id, log_folder, *positional, **kwargs)
        self.checkpoint_freq = int(getattr(args, "checkpoint_freq", 0) or 0)
        resume, resume_from = bool(getattr(args, "resume", False)), getattr(args, "resume_from", None)
        self.resumed_from = self.find_checkpoint(resume, resume_from)
        """The checkpoint this run resumes from (None: a new run)."""
        if (self.checkpoint_freq > 0 or resume or resume_from) and (self.optimize_hyperparameters or self.trained_agent):
            raise ValueError("--checkpoint-freq, --resume and --resume-from are for training runs without -optimize and -i")
        if self.checkpoint_freq < 0:
            raise ValueError(f"--checkpoint-freq must be 0 (none) or positive, got {self.checkpoint_freq}")
        if self.resumed_from is not None:
            run_dir = str(self.resumed_from.path.parent)
            self.save_path, self.params_path = run_dir, os.path.join(run_dir, str(self.env_name))
            # rl-zoo3's -i machinery builds the envs with the checkpoint's VecNormalize statistics and loads the model
            # (through _load_pretrained_agent below)
            self.trained_agent, self.continue_training = str(self.resumed_from.model_path), True

    def find_checkpoint(self, resume: bool, resume_from: str | None) -> Checkpoint | None:
        """
        :param resume: ``--resume``: the latest run under ``-f``, if it has a checkpoint
        :param resume_from: ``--resume-from``: this run folder (or one of its checkpoints), which must have one
        :return: the checkpoint to resume from, or None
        """
        if resume_from:
            folder = Path(resume_from)
            found = Checkpoint(folder) if _CHECKPOINT_NAME.match(folder.name) else latest_checkpoint(folder)
            if found is None or not (found.path / STATE_FILE).is_file():
                raise FileNotFoundError(f"--resume-from {resume_from}: no checkpoint there (written by --checkpoint-freq)")
            return found
        if resume:
            run_dir = latest_run(self.log_folder, self.algo, self.env_name.gym_id)
            if run_dir is not None and run_owner(run_dir) is not None:  # not a new run next to one in progress either
                claim_run(run_dir)  # raises, saying who trains it
            return latest_checkpoint(run_dir) if run_dir is not None else None
        return None

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        """rl-zoo3's, in a resumed run with the run folder's files, the model and the callbacks as at the checkpoint."""
        checkpoint = self.resumed_from
        if self.checkpoint_freq > 0 or checkpoint is not None:
            claim_run(Path(self.save_path))
        if checkpoint is None:
            return super().setup_experiment()
        state = checkpoint.state
        print(f"Resuming {self.save_path} from {checkpoint.path.name} ({state.num_timesteps:,} steps)")
        checkpoint.restore_run_files(Path(self.save_path))
        result = super().setup_experiment()
        if result is not None:
            model = result[0]
            if model.n_envs != state.n_envs:
                raise ValueError(f"the run was started with {state.n_envs} envs, not {model.n_envs}: resume it with those")
            if model.seed is not None:  # fresh episodes, not those the run started with
                model.env.seed((model.seed + state.num_timesteps) % 2**32)  # type: ignore[union-attr]
            for callback in flat_callbacks(self.callbacks):
                callback.n_calls = state.n_calls
                if isinstance(callback, EvalCallback):
                    checkpoint.restore_evaluations(callback)
        return result

    def create_callbacks(self) -> None:
        """rl-zoo3's, then the :class:`ResumeCallback` when the run checkpoints or resumes."""
        super().create_callbacks()
        resumed = self.resumed_from
        frequency = self.checkpoint_freq or (resumed.state.checkpoint_freq if resumed is not None else 0)
        if frequency > 0 or resumed is not None:
            self.callbacks.append(ResumeCallback(self.save_path, frequency, str(self.env_name), resumed, self.verbose))

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        """Ours; the training env of a resumed run appends to its restored Monitor files."""
        if self.resumed_from is None or eval_env or no_log:
            return super().create_envs(n_envs, eval_env=eval_env, no_log=no_log)
        monitor_kwargs, env_wrapper = self.monitor_kwargs, self.env_wrapper
        self.monitor_kwargs = {**monitor_kwargs, "override_existing": False}
        self.env_wrapper = partial(continue_monitor, wrapper=env_wrapper)
        try:
            return super().create_envs(n_envs, eval_env=eval_env, no_log=no_log)
        finally:
            self.monitor_kwargs, self.env_wrapper = monitor_kwargs, env_wrapper

    def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: VecEnv) -> BaseAlgorithm:
        """rl-zoo3's ``-i``; a resumed run's model is the checkpoint's, with the settings it was started with."""
        if self.resumed_from is None:
            return super()._load_pretrained_agent(hyperparams, env)
        live = {key: hyperparams[key] for key in RUNTIME_KEYS if key in hyperparams}
        return self.resumed_from.load_model(
            ALGOS[self.algo], env, device=self.device, tensorboard_log=self.tensorboard_log, verbose=self.verbose, **live
        )

    def learn(self, model: BaseAlgorithm) -> None:
        """rl-zoo3's; a resumed run trains the steps left to ``-n`` (``reset_num_timesteps=False``)."""
        if self.resumed_from is None:
            return super().learn(model)
        remaining = self.n_timesteps - model.num_timesteps
        if remaining <= 0:
            print(f"{self.save_path} has its {model.num_timesteps:,} steps (-n {self.n_timesteps:,}): nothing left to train")
            assert model.env is not None
            model.env.close()
            return
        budget, self.n_timesteps = self.n_timesteps, remaining
        try:
            super().learn(_ContinuedModel(model))  # type: ignore[arg-type]
        finally:
            self.n_timesteps = budget
