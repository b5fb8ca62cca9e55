"""
rl-zoo3's ``ExperimentManager`` with two additions for our algorithm keys (rl-zoo3's own keys are untouched):

- the default config is our ``hyperparams/{algo}.yml`` instead of rl-zoo3's bundled folder (``-conf`` still wins);
- the entry is checked against the algorithm's constructor before anything is built, and errors raised while building
  say which file and entry they come from.
"""

from pathlib import Path
from typing import Any

import yaml
from rl_zoo3.exp_manager import ExperimentManager as ZooExperimentManager
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_trpo_ext.zoo.checks import HyperparameterError, check_hyperparams
from sb3_trpo_ext.zoo.registration import ZOO_KEYS, default_config, register


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

    def entry_name(self) -> str:
        """The config entry rl-zoo3 uses for this env: the env id, ``atari`` or ``default``."""
        gym_id = self.env_name.gym_id
        keys: list[str] = []
        if self.config.endswith((".yml", ".yaml")) and Path(self.config).is_file():
            loaded = yaml.safe_load(Path(self.config).read_text())
            keys = list(loaded) if isinstance(loaded, dict) else []
        if not keys or gym_id in keys:
            return gym_id
        if self._is_atari and "atari" in keys:
            return "atari"
        return "default" if "default" in keys else gym_id

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
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
