"""
Registration of our algorithms in rl-zoo3's tables.

rl-zoo3 has no plugin mechanism: ``--algo`` choices come from ``rl_zoo3.ALGOS`` when the arguments are parsed, optuna
samplers from ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER`` and trial converters from ``HYPERPARAMS_CONVERTER``.
:func:`register` adds our keys to these dictionaries in place (the zoo's modules all hold the same objects), next to
rl-zoo3's own ``trpo`` (sb3-contrib), which is left alone:

- ``trpo_ext`` -> :class:`sb3_trpo_ext.TRPO`
- ``natural_pg`` -> :class:`sb3_trpo_ext.NaturalPG`
- ``vine_trpo`` -> ``sb3_trpo_ext.vine.VineTRPO``, only when that module imports
- ``trpo_lstm`` -> :class:`sb3_trpo_ext.RecurrentTRPO`, ``natural_pg_lstm`` -> :class:`sb3_trpo_ext.RecurrentNaturalPG`
  (named after rl-zoo3's ``ppo_lstm``)
- ``trpo_mask`` -> :class:`sb3_trpo_ext.MaskableTRPO`, ``natural_pg_mask`` -> :class:`sb3_trpo_ext.MaskableNaturalPG`
  (named after sb3-contrib's ``ppo_mask``; the env must give action masks)

Our default config folder (:func:`hyperparams_folder`) is the repository's top-level ``hyperparams/`` in a source
checkout or editable install, and its copy ``sb3_trpo_ext/hyperparams/`` that the build puts into a wheel (setup.py);
``SB3_TRPO_EXT_HYPERPARAMS`` overrides both. :class:`sb3_trpo_ext.zoo.exp_manager.ExperimentManager` reads it for our
keys unless ``-conf`` is given.
"""

import os
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

import sb3_trpo_ext
from sb3_trpo_ext.maskable import MaskableNaturalPG, MaskableTRPO
from sb3_trpo_ext.npg import NaturalPG
from sb3_trpo_ext.recurrent import RecurrentNaturalPG, RecurrentTRPO
from sb3_trpo_ext.trpo import TRPO
from sb3_trpo_ext.zoo.samplers import CONVERTERS, SAMPLERS

ZOO_KEYS = ("trpo_ext", "natural_pg", "vine_trpo", "trpo_lstm", "natural_pg_lstm", "trpo_mask", "natural_pg_mask")
"""Every key this package registers."""

HYPERPARAMS_ENV_VAR = "SB3_TRPO_EXT_HYPERPARAMS"


def vine_class() -> type[BaseAlgorithm]:
    """:return: ``VineTRPO`` (imported when asked for: the vine's modules are the package's largest)"""
    from sb3_trpo_ext.vine import VineTRPO

    return VineTRPO


def zoo_algorithms() -> dict[str, type[BaseAlgorithm]]:
    """:return: our zoo keys and their classes"""
    return {
        "trpo_ext": TRPO,
        "natural_pg": NaturalPG,
        "vine_trpo": vine_class(),
        "trpo_lstm": RecurrentTRPO,  # named after rl-zoo3's ppo_lstm (sb3-contrib's RecurrentPPO)
        "natural_pg_lstm": RecurrentNaturalPG,
        "trpo_mask": MaskableTRPO,  # named after sb3-contrib's ppo_mask (MaskablePPO)
        "natural_pg_mask": MaskableNaturalPG,
    }


def hyperparams_folder() -> Path:
    """
    Our default config folder, the first of:

    - ``$SB3_TRPO_EXT_HYPERPARAMS`` if set (it must exist);
    - ``sb3_trpo_ext/hyperparams/`` inside the installed package (a wheel install: the build copies the top-level
      folder there);
    - the top-level ``hyperparams/`` next to the package (a source checkout or an editable install).

    :return: the folder
    :raises FileNotFoundError: when none exists (pass the YAML file with ``-conf`` instead)
    """
    override = os.environ.get(HYPERPARAMS_ENV_VAR)
    if override:
        if not Path(override).is_dir():
            raise FileNotFoundError(f"{HYPERPARAMS_ENV_VAR}={override} is not a folder")
        return Path(override)
    package = Path(sb3_trpo_ext.__file__).resolve().parent
    candidates = [package / "hyperparams", package.parent / "hyperparams"]
    for folder in candidates:
        # a folder with our YAML, not any "hyperparams" folder that happens to lie next to the package
        if (folder / "trpo_ext.yml").is_file():
            return folder
    raise FileNotFoundError(
        f"sb3-trpo-ext's hyperparams folder was not found (looked in {', '.join(map(str, candidates))}). "
        f"Reinstall the package, set {HYPERPARAMS_ENV_VAR}, or pass the YAML file with -conf."
    )


def default_config(algo: str) -> str | None:
    """
    :param algo: an algorithm key
    :return: the path of our ``hyperparams/{algo}.yml`` for our keys, ``None`` for rl-zoo3's own keys
    """
    if algo not in ZOO_KEYS:
        return None
    return str(hyperparams_folder() / f"{algo}.yml")


def register() -> dict[str, type[BaseAlgorithm]]:
    """
    Add our algorithms, samplers and converters to rl-zoo3's tables (idempotent).

    :return: the keys registered and their classes
    """
    import rl_zoo3.exp_manager
    import rl_zoo3.hyperparams_opt
    import rl_zoo3.utils

    from sb3_trpo_ext.common.torch_layers import TRPOAtariCNN

    algorithms = zoo_algorithms()
    # the names a YAML entry's policy_kwargs string may use: rl-zoo3 evaluates it in its exp_manager module
    rl_zoo3.exp_manager.TRPOAtariCNN = TRPOAtariCNN  # type: ignore[attr-defined]
    # the same dictionary objects that rl-zoo3's train, enjoy and ExperimentManager read
    samplers: dict[str, Any] = rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER
    converters: dict[str, Any] = rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER
    for key, algorithm_class in algorithms.items():
        rl_zoo3.utils.ALGOS[key] = algorithm_class
        samplers[key] = SAMPLERS[key]
        converters[key] = CONVERTERS[key]
    return algorithms
