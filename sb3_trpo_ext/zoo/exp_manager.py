"""
rl-zoo3's ``ExperimentManager`` with three additions for our algorithm keys (rl-zoo3's own keys are untouched):

- the default config is our ``hyperparams/{algo}.yml`` instead of rl-zoo3's bundled folder (``-conf`` still wins);
- the entry is checked against the algorithm's constructor before anything is built, and errors raised while building
  say which file and entry they come from (or that a ``-params`` override is at fault);
- ``-optimize`` evaluates ``vine_trpo``'s trials on a schedule in counted (trunk and branch) steps, as ``-n``
  counts them (:mod:`sb3_trpo_ext.zoo.evaluation`); plain training warns when ``--eval-freq``, which counts its trunk
  steps, is out of the run's reach.

And two for every key:

- with ``-optimize --storage <database URL>``, the storage's tables and the study are created once by
  :func:`prepare_study` (retrying) before rl-zoo3 opens them, so that several workers started at the same time on a
  fresh database do not race on Optuna's schema creation;
- ``vec_env_type="ray"`` (``--vec-env ray``, with ``--ray-address``): the training envs are a
  :class:`~sb3_trpo_ext.distributed.RayVecEnv` (rl-zoo3's ``vec_env_class``, as ``"subproc"`` maps to
  ``SubprocVecEnv``), the evaluation env stays a ``DummyVecEnv`` (it steps one env at a time between rollouts, where an
  actor would hold a CPU of the cluster idle), and ``vine_trpo``'s branches run on a
  :class:`~sb3_trpo_ext.distributed.RayBranchPool` (settings from the entry's ``branch_pool: dict(...)``).
"""

import random
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import optuna
import sqlalchemy.exc
import yaml
from rl_zoo3.exp_manager import ExperimentManager as ZooExperimentManager
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_trpo_ext.zoo.checks import HyperparameterError, MissingEntryError, check_hyperparams
from sb3_trpo_ext.zoo.evaluation import trial_evaluations_in_counted_steps, warn_if_never_evaluated
from sb3_trpo_ext.zoo.registration import ZOO_KEYS, default_config, register

STUDY_SETUP_ATTEMPTS = 6
"""How many times :func:`prepare_study` tries before giving up."""

_RACE_ERRORS = (
    sqlalchemy.exc.IntegrityError,  # PostgreSQL: duplicate key value ... (the studydirection enum, version_info, ...)
    sqlalchemy.exc.ProgrammingError,  # PostgreSQL: relation ... already exists
    sqlalchemy.exc.OperationalError,  # SQLite: table ... already exists, database is locked
    optuna.exceptions.DuplicatedStudyError,
)


def prepare_study(storage: str, study_name: str | None, attempts: int = STUDY_SETUP_ATTEMPTS, delay: float = 0.2) -> None:
    """
    Create a database storage's tables and the study (direction ``maximize``, as rl-zoo3 does), if not there yet.

    Optuna creates its tables the first time a process opens a storage URL. On a fresh PostgreSQL database, two
    workers that do this at the same time race, and the loser fails (``duplicate key value violates unique constraint
    "pg_type_typname_nsp_index"``, from creating the ``studydirection`` enum twice). Here the loser waits a little and
    tries again: by then the tables exist. A journal file (``.log``) needs nothing.

    :param storage: rl-zoo3's ``--storage`` (a database URL or a ``.log`` file)
    :param study_name: rl-zoo3's ``--study-name`` (``None``: rl-zoo3 lets Optuna make one up, only the tables are made)
    :param attempts: how many times to try
    :param delay: base of the wait between attempts, in seconds (grows with the attempt, with jitter)
    """
    if storage.endswith(".log"):
        return
    for attempt in range(1, attempts + 1):
        rdb_storage = None
        try:
            rdb_storage = optuna.storages.RDBStorage(storage)
            if study_name is not None:
                optuna.create_study(storage=rdb_storage, study_name=study_name, direction="maximize", load_if_exists=True)
            return
        except _RACE_ERRORS:
            if attempt == attempts:
                raise
            time.sleep(delay * attempt * (1.0 + random.random()))
        finally:
            if rdb_storage is not None:
                rdb_storage.engine.dispose()


VEC_ENV_TYPES = ("dummy", "subproc", "ray")
"""The choices of ``--vec-env``: rl-zoo3's and ``ray``."""


def zoo_env(env_fn: Callable[[], gym.Env]) -> gym.Env:
    """
    :param env_fn: one of the env functions ``make_vec_env`` gives a VecEnv
    :return: its env. Shipped to a Ray actor, this function is pickled by reference, so the actor imports this
        module, hence rl-zoo3, whose import patches gymnasium's ``TimeLimit`` (``rl_zoo3.gym_patches``): the actors'
        envs are those rl-zoo3 builds in its own process
    """
    return env_fn()


def ray_vec_env(env_fns: list[Callable[[], gym.Env]], **kwargs: Any) -> VecEnv:
    """
    ``--vec-env ray``'s ``vec_env_class``: a :class:`~sb3_trpo_ext.distributed.RayVecEnv` of rl-zoo3's env functions.

    :param env_fns: the env functions, one per env (Monitor and wrappers included, as ``make_vec_env`` makes them)
    :param kwargs: keyword arguments of ``RayVecEnv`` (``ray_address``)
    :return: the VecEnv
    """
    from sb3_trpo_ext.distributed import RayVecEnv  # Ray only for --vec-env ray

    return RayVecEnv([partial(zoo_env, env_fn) for env_fn in env_fns], **kwargs)


def branch_env(spec: gym.envs.registration.EnvSpec, wrapper: Any, **env_kwargs: Any) -> gym.Env:
    """
    One env as rl-zoo3's ``create_envs`` builds a training env (``make_vec_env`` of ``spec.make``: the env, SB3's
    ``Monitor``, then the entry's ``env_wrapper``), without a Monitor file: the envs of a
    :class:`~sb3_trpo_ext.distributed.RayBranchPool` only give their clones to branch rollouts. Pickled by reference
    as :func:`zoo_env` is, so rl-zoo3's ``TimeLimit`` patch applies on the actors too.

    :param spec: the env's registration
    :param wrapper: the entry's ``env_wrapper`` as rl-zoo3 reads it (a function of the env), or None
    :param env_kwargs: the env's keyword arguments (``--env-kwargs``)
    :return: the env
    """
    env: gym.Env = Monitor(spec.make(**env_kwargs))
    return wrapper(env) if wrapper is not None else env


class ExperimentManager(ZooExperimentManager):
    """rl-zoo3's experiment manager, aware of our default config folder, checking our entries, and with ``ray``."""

    def __init__(self, args: Any, algo: str, env_id: str, log_folder: str, *positional: Any, **kwargs: Any) -> None:
        register()
        if algo in ZOO_KEYS and kwargs.get("config") is None:
            kwargs["config"] = default_config(algo)
        self.vec_env_type = kwargs.get("vec_env_type", "dummy")
        if self.vec_env_type not in VEC_ENV_TYPES:
            raise ValueError(f"vec_env_type={self.vec_env_type!r} is not one of {', '.join(VEC_ENV_TYPES)}")
        if self.vec_env_type == "ray":
            kwargs["vec_env_type"] = "dummy"  # rl-zoo3 knows dummy and subproc; the class is replaced below
        super().__init__(args, algo, env_id, log_folder, *positional, **kwargs)
        self.ray_address: str | None = getattr(args, "ray_address", None)
        """The Ray cluster of ``--vec-env ray`` (None: a local instance)."""
        if self.vec_env_type == "ray":
            self.vec_env_class = ray_vec_env  # type: ignore[assignment]
            self.vec_env_kwargs = {"ray_address": self.ray_address}

    @property
    def uses_ray(self) -> bool:
        """Whether this run's envs (and ``vine_trpo``'s branches) run on Ray (``--vec-env ray``)."""
        return self.vec_env_type == "ray"

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        """rl-zoo3's, with the evaluation env of a Ray run in a ``DummyVecEnv`` (see the module's docstring)."""
        if not (eval_env and self.uses_ray):
            return super().create_envs(n_envs, eval_env=eval_env, no_log=no_log)
        ray_class, ray_kwargs = self.vec_env_class, self.vec_env_kwargs
        self.vec_env_class, self.vec_env_kwargs = DummyVecEnv, {}
        try:
            return super().create_envs(n_envs, eval_env=eval_env, no_log=no_log)
        finally:
            self.vec_env_class, self.vec_env_kwargs = ray_class, ray_kwargs

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]) -> tuple[dict[str, Any], Any, Any, Any]:
        """rl-zoo3's, then, for ``vine_trpo`` with ``--vec-env ray``, the entry's ``branch_pool`` settings into a pool."""
        hyperparams, env_wrapper, callbacks, vec_env_wrapper = super()._preprocess_hyperparams(hyperparams)
        settings = hyperparams.get("branch_pool")
        if self.algo == "vine_trpo" and self.uses_ray:
            hyperparams["branch_pool"] = self.branch_pool(settings or {}, env_wrapper)
        elif settings is not None:
            raise HyperparameterError(
                f"{self.config}, entry {self.entry_name()!r}: 'branch_pool' settings run vine_trpo's branches on Ray "
                f"actors: add --vec-env ray (with --ray-address HEAD:6379 for a cluster), or remove the key."
            )
        return hyperparams, env_wrapper, callbacks, vec_env_wrapper

    def branch_pool(self, settings: dict[str, Any], env_wrapper: Any) -> Any:
        """
        :param settings: keyword arguments of :class:`~sb3_trpo_ext.distributed.RayBranchPool` (the entry's
            ``branch_pool``), without ``env``
        :param env_wrapper: the entry's ``env_wrapper`` as rl-zoo3 reads it, or None
        :return: the pool, whose actors build the training env's envs (:func:`branch_env`) and join ``--ray-address``
        :raises HyperparameterError: for settings the pool does not take
        """
        from sb3_trpo_ext.distributed import RayBranchPool

        if isinstance(settings, str):  # a YAML entry's "dict(...)", evaluated as rl-zoo3 evaluates policy_kwargs
            settings = eval(settings)
        if not isinstance(settings, dict) or "env" in settings:
            raise HyperparameterError(
                f"{self.config}, entry {self.entry_name()!r}: 'branch_pool' must be a dict of RayBranchPool keywords "
                f"other than env (e.g. branch_pool: dict(n_actors=16)), got {settings!r}"
            )
        source = partial(branch_env, gym.spec(self.env_name.gym_id), env_wrapper)
        options = dict(env_kwargs=self.env_kwargs, monitor=False, ray_address=self.ray_address, **settings)
        try:
            return RayBranchPool(source, **options)
        except (TypeError, ValueError) as error:
            raise HyperparameterError(f"{self.config}, entry {self.entry_name()!r}: branch_pool: {error}") from error

    @property
    def checks_entries(self) -> bool:
        """Whether this run's algorithm is one of ours (rl-zoo3's own keys keep rl-zoo3's behaviour)."""
        return self.algo in ZOO_KEYS

    def config_entries(self) -> list[str]:
        """The entries of a YAML config file (empty for a Python config, or a file that is not a mapping)."""
        if self.config.endswith((".yml", ".yaml")) and Path(self.config).is_file():
            loaded = yaml.safe_load(Path(self.config).read_text())
            return [str(key) for key in loaded] if isinstance(loaded, dict) else []
        return []

    def entry_name(self) -> str:
        """The config entry rl-zoo3 uses for this env: the env id, ``atari`` or ``default``."""
        gym_id = self.env_name.gym_id
        keys = self.config_entries()
        if not keys or gym_id in keys:
            return gym_id
        if self._is_atari and "atari" in keys:
            return "atari"
        return "default" if "default" in keys else gym_id

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        keys = self.config_entries()
        gym_id = self.env_name.gym_id
        fallback = "atari" if self._is_atari else "default"  # rl-zoo3 falls back on 'atari' for Atari envs
        if self.checks_entries and keys and gym_id not in keys and fallback not in keys:
            # where rl-zoo3 raises ValueError("Hyperparameters not found for ...") (KeyError('atari') for Atari)
            raise MissingEntryError(
                f"{self.config} has no entry for {gym_id} and no {fallback!r} entry to fall back on (its entries: "
                f"{', '.join(keys)}). Add an entry {gym_id}: or {fallback}: to it, or pass another file with -conf."
            )
        hyperparams, saved_hyperparams = super().read_hyperparameters()
        if self.checks_entries:
            check_hyperparams(
                ALGOS[self.algo],
                hyperparams,
                entry=self.entry_name(),
                source=self.config,
                require_n_timesteps=self.n_timesteps <= 0,
                overrides=self.custom_hyperparams,
            )
        return hyperparams, saved_hyperparams

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        try:
            return super().setup_experiment()
        except HyperparameterError:
            raise
        except (ValueError, TypeError) as error:
            if not self.checks_entries:
                raise
            raise HyperparameterError(f"{self.source_of(error)}: {type(error).__name__}: {error}") from error

    def source_of(self, error: Exception) -> str:
        """
        :param error: an error raised while building the run
        :return: where the value it names comes from: the ``-params`` overrides whose keys it names, else the config
            file's entry
        """
        where = f"{self.config}, entry {self.entry_name()!r}"
        overrides = self.custom_hyperparams or {}
        named = [key for key in overrides if re.search(rf"\b{re.escape(str(key))}\b", str(error))]
        if not named:
            return where
        given = " ".join(f"{key}:{overrides[key]!r}" for key in named)
        return f"-params {given} (overriding {where})"

    def learn(self, model: BaseAlgorithm) -> None:
        """rl-zoo3's, warning first when ``vine_trpo``'s evaluations are out of the run's reach."""
        warn_if_never_evaluated(model, self.callbacks, self.n_timesteps)
        super().learn(model)

    def hyperparameters_optimization(self) -> None:
        if self.storage is not None:
            prepare_study(self.storage, self.study_name)
        with trial_evaluations_in_counted_steps():
            super().hyperparameters_optimization()
