"""
The benchmark matrix's cells: which algorithms it trains (ours with our YAML, one-change variants of ours, sb3-contrib
with rl-zoo3's YAML, the class defaults), its presets, the YAML entry and budget of each cell, and each cell's training
command. ``benchmarks/matrix.py`` runs the cells.

A cell with a checkpoint frequency (``--checkpoint-freq``, the ``atari`` preset's; every Atari cell has one, 50K steps
by default) trains with ``--checkpoint-freq N --resume`` (:mod:`sb3_trpo_ext.zoo.resume`): the same command, run again
after a kill, resumes the run in the cell's log folder from its last checkpoint. Such an sb3-contrib cell runs
rl-zoo3's ``--algo trpo`` through our entry point (rl-zoo3's own train cannot resume a run; ours runs rl-zoo3's keys
unchanged, with the checkpoints added). The class-defaults cells (``benchmarks/train_defaults.py``) do not checkpoint.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from reporting.results_io import ROOT

RESULTS = os.path.join(ROOT, "benchmarks", "results", "matrix")
LOGS = os.environ.get("SB3_TRPO_EXT_MATRIX_LOGS") or os.path.join(ROOT, "benchmarks", "output", "matrix")
"""The cells' run folders and checkpoints; set ``SB3_TRPO_EXT_MATRIX_LOGS`` to keep them outside the checkout (a
new checkout of the repository then still resumes the runs of an earlier one on the same machine)."""
CONTRIB_CONFIG = os.path.join("benchmarks", "matrix_configs", "trpo_contrib.yml")  # relative to ROOT

OURS = ("trpo_ext", "natural_pg", "vine_trpo")
CONTRIB = "sb3-contrib"
EVAL_EPISODES = 10
ATARI_GAMES = (
    "BeamRiderNoFrameskip-v4",
    "BreakoutNoFrameskip-v4",
    "EnduroNoFrameskip-v4",
    "PongNoFrameskip-v4",
    "QbertNoFrameskip-v4",
    "SeaquestNoFrameskip-v4",
    "SpaceInvadersNoFrameskip-v4",
)
"""The paper's seven Atari games."""
ATARI_CHECKPOINT_FREQ = 50_000
"""Steps between the checkpoints of an Atari cell (a few minutes of a CnnPolicy run on one CPU core)."""


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
    "vine_trpo-atari-2m": Variant(  # the YAML's 400K-step iterations (the paper's) make 5 updates in 2M steps
        "vine_trpo",
        "the vine's Atari entry with iterations of 512 + 64 x 4 x 50 = 13,312 simulator steps (150 in 2M), not 400K",
        lambda env: {"n_steps": 512, "n_rollout_states": 64, "rollout_length": 50},
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
    "trpo_ext-defaults-0.1.0": ("trpo_ext", {"target_kl": 0.01, "cg_damping": 0.1, "damped_step_length": False}),
    "trpo_ext-defaults-cg10": ("trpo_ext", {"target_kl": 0.08, "cg_damping": 0.8, "cg_max_steps": 10}),
    # the step length of sb3-contrib and of the paper's own code (modular_rl): beta from s^T (F + damping I) s
    "trpo_ext-defaults-damped": ("trpo_ext", {"damped_step_length": True}),
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
    # issue 25: the paper's seven games at 2M steps (hours per cell: checkpointed, resumed by a restarted runner). Also
    # for --algos sb3-contrib --envs BreakoutNoFrameskip-v4 (benchmarks/matrix_configs/trpo_contrib.yml: our settings)
    # and --algos vine_trpo-atari-2m --envs BreakoutNoFrameskip-v4 QbertNoFrameskip-v4 (the vine at equal steps).
    "atari": {
        "algos": ["trpo_ext"],
        "envs": list(ATARI_GAMES),
        "seeds": [0],
        "budgets": dict.fromkeys(ATARI_GAMES, 2_000_000),
        "checkpoint_freq": ATARI_CHECKPOINT_FREQ,
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
    entry = {**config_entry(algo, env), **variant_params(algo, env)}
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
    checkpoint_freq: int = 0
    """Steps between the run's checkpoints (0: none, the run starts over after a kill)."""

    @property
    def result_path(self) -> str:
        return os.path.join(self.results, self.algo, self.env, f"seed_{self.seed}.json")

    @property
    def lock_path(self) -> str:
        return self.result_path + ".lock"

    @property
    def log_dir(self) -> str:
        return os.path.join(self.logs, self.algo, self.env, f"seed_{self.seed}")

    @property
    def zoo_key(self) -> str | None:
        """The ``--algo`` of the cell's zoo training (None for a class-defaults cell)."""
        if self.algo in DEFAULTS:
            return None
        return base_algo(self.algo) if base_algo(self.algo) in OURS else "trpo"

    def resumable(self) -> Any:
        """
        :return: the checkpoint the cell's training would resume from (a
            :class:`~sb3_trpo_ext.zoo.resume.Checkpoint`), or None (it would start a new run)
        """
        if self.checkpoint_freq <= 0 or self.zoo_key is None:
            return None
        from sb3_trpo_ext.zoo.resume import resumable_checkpoint  # rl-zoo3 and torch: only when needed

        return resumable_checkpoint(self.log_dir, self.zoo_key, self.env)

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
        if base_algo(self.algo) in OURS or self.checkpoint_freq > 0:  # rl-zoo3's train has no --resume
            head = [self.python, "-m", "sb3_trpo_ext.train", "--algo", str(self.zoo_key)]
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
        if self.checkpoint_freq > 0:
            command += ["--checkpoint-freq", str(self.checkpoint_freq), "--resume"]
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
    checkpoint_freq: int | None = None,
) -> list[Cell]:
    """
    The cells in running order: seed by seed (every algorithm and env of seed 0 first), so a partly filled matrix
    already compares every algorithm.

    :param budget: steps for every cell; else ``budgets[env]``; else the env's ``n_timesteps`` in the cell's YAML
    :param eval_freq: steps between evaluations; default ``budget // 20``
    :param checkpoint_freq: steps between checkpoints of the zoo cells (:func:`cell_checkpoint_freq`: None or 0 is
        none, except for Atari cells, which checkpoint every :data:`ATARI_CHECKPOINT_FREQ` steps by default)
    """
    cells = []
    for seed in seeds:
        for env in envs:
            for algo in algos:
                if algo not in ALGOS:
                    raise SystemExit(f"unknown algorithm {algo!r}: choose from {', '.join(ALGOS)}")
                steps = budget or (budgets or {}).get(env) or default_budget(algo, env)
                freq = eval_freq or default_eval_freq(steps)
                every = cell_checkpoint_freq(algo, env, checkpoint_freq)
                cells.append(Cell(algo, env, seed, steps, freq, results=results, logs=logs, checkpoint_freq=every))
    return cells


def cell_checkpoint_freq(algo: str, env: str, checkpoint_freq: int | None) -> int:
    """
    :param checkpoint_freq: the one asked for (None or 0: none)
    :return: the cell's steps between checkpoints: 0 for class-defaults cells (their script does not checkpoint); for
        an Atari env the one asked for, else :data:`ATARI_CHECKPOINT_FREQ` (always some: the full-game episode log
        that its result records comes with the checkpoints); for the others the one asked for
    """
    if algo in DEFAULTS:
        return 0
    if is_atari(env):
        return checkpoint_freq or ATARI_CHECKPOINT_FREQ
    return max(checkpoint_freq or 0, 0)
