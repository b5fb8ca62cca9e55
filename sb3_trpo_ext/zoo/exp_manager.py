"""
rl-zoo3's ``ExperimentManager`` with two additions for our algorithm keys (rl-zoo3's own keys are untouched):

- the default config is our ``hyperparams/{algo}.yml`` instead of rl-zoo3's bundled folder (``-conf`` still wins);
- the entry is checked against the algorithm's constructor before anything is built, and errors raised while building
  say which file and entry they come from.

And one for every key: with ``-optimize --storage <database URL>``, the storage's tables and the study are created once
by :func:`prepare_study` (retrying) before rl-zoo3 opens them, so that several workers started at the same time on a
fresh database do not race on Optuna's schema creation.
"""

import random
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import yaml
from rl_zoo3.exp_manager import ExperimentManager as ZooExperimentManager
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_trpo_ext.zoo.checks import HyperparameterError, MissingEntryError, check_hyperparams
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


class ExperimentManager(ZooExperimentManager):
    """rl-zoo3's experiment manager, aware of our default config folder and checking our entries."""

    def __init__(self, args: Any, algo: str, env_id: str, log_folder: str, *positional: Any, **kwargs: Any) -> None:
        register()
        if algo in ZOO_KEYS and kwargs.get("config") is None:
            kwargs["config"] = default_config(algo)
        super().__init__(args, algo, env_id, log_folder, *positional, **kwargs)

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
            raise HyperparameterError(
                f"{self.config}, entry {self.entry_name()!r}: {type(error).__name__}: {error}"
            ) from error

    def hyperparameters_optimization(self) -> None:
        if self.storage is not None:
            prepare_study(self.storage, self.study_name)
        super().hyperparameters_optimization()
