"""
rl-zoo3 integration: register ``trpo_ext``, ``natural_pg`` and ``vine_trpo`` next to rl-zoo3's own algorithms.

- ``python -m sb3_trpo_ext.train`` / ``python -m sb3_trpo_ext.enjoy`` (console scripts ``sb3-trpo-ext-train`` /
  ``sb3-trpo-ext-enjoy``): rl-zoo3's scripts with our keys added;
- :func:`register`: add our keys to rl-zoo3's tables from your own script;
- :func:`check_hyperparams` / ``python -m sb3_trpo_ext.zoo.checks FILE...``: check zoo YAML against the constructors.

Names are imported lazily, so that ``python -m sb3_trpo_ext.zoo.<module>`` runs each module once.
"""

import importlib
from typing import Any

_EXPORTS = {
    "HyperparameterError": "sb3_trpo_ext.zoo.checks",
    "MissingEntryError": "sb3_trpo_ext.zoo.checks",
    "check_config_file": "sb3_trpo_ext.zoo.checks",
    "check_hyperparams": "sb3_trpo_ext.zoo.checks",
    "ZOO_KEYS": "sb3_trpo_ext.zoo.registration",
    "default_config": "sb3_trpo_ext.zoo.registration",
    "hyperparams_folder": "sb3_trpo_ext.zoo.registration",
    "register": "sb3_trpo_ext.zoo.registration",
    "zoo_algorithms": "sb3_trpo_ext.zoo.registration",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
