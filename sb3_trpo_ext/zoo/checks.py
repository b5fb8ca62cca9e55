"""
Checks of zoo-style hyperparameter entries against an algorithm's constructor, before anything is built or trained.

rl-zoo3 passes every key of a YAML entry that it does not consume itself (``n_timesteps``, ``n_envs``,
``normalize``, ``frame_stack``, ``env_wrapper``, ...) straight to the algorithm's constructor. A misspelt key then
fails deep inside SB3 (or, when continuing training with ``--trained-agent``, is silently set as an attribute by
``load()``). :func:`check_hyperparams` instead names the file, the entry (env id) and the key, and says what was
expected.

The accepted keywords are read from the constructor's signature, and each value is checked against the keyword's type
annotation (the constructors check values, not types), allowing for the strings that rl-zoo3 converts itself
(``learning_rate: lin_1e-3``, ``policy_kwargs: "dict(...)"``). Values the constructor rejects are named with their
file and entry by :class:`~sb3_trpo_ext.zoo.exp_manager.ExperimentManager`.

Run ``python -m sb3_trpo_ext.zoo.checks hyperparams/*.yml`` to check whole files without building anything.
"""

import argparse
import collections.abc
import difflib
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch as th
import yaml
from torch import nn


class HyperparameterError(ValueError):
    """A zoo hyperparameter entry that the algorithm would not accept."""

    exit_status = 2
    """``python -m sb3_trpo_ext.train``'s exit status for it (that of a usage error)."""


class MissingEntryError(HyperparameterError):
    """A config file without an entry for the env (nor ``atari`` for an Atari env, nor ``default``)."""

    exit_status = 1
    """rl-zoo3's: its ``ValueError("Hyperparameters not found for ...")`` ends the script with status 1."""


ZOO_KEYS: dict[str, str] = {
    "n_timesteps": "number",
    "n_envs": "int",
    "normalize": "bool, dict or string",
    "frame_stack": "int",
    "env_wrapper": "wrapper name, list or dict",
    "vec_env_wrapper": "wrapper name, list or dict",
    "callback": "callback name, list or dict",
    "monitor_kwargs": "dict or string",
    "env_kwargs": "dict",
}
"""Keys that rl-zoo3 consumes itself (they never reach the constructor), with what each must be."""

SET_FROM_COMMAND_LINE: dict[str, str] = {
    "env": "--env",
    "seed": "--seed",
    "verbose": "--verbose",
    "device": "--device",
    "tensorboard_log": "-tb/--tensorboard-log",
}
"""Constructor keywords that rl-zoo3 fills from the command line: a YAML value would clash with them."""

SETTINGS_FOR_OBJECTS = {"branch_pool": "RayBranchPool"}
"""Keywords whose entry value is a dict of the keywords of the object our zoo builds from it (with ``--vec-env ray``)."""

OFF_POLICY_ONLY = {"noise_type", "noise_std"}
"""rl-zoo3 turns these into an ``action_noise`` object, which on-policy algorithms do not take."""

SCHEDULE_KEYS = {"learning_rate"}
"""Keys that rl-zoo3 turns from ``lin_<value>`` strings into schedules."""

_LINEAR_SCHEDULE = re.compile(r"^lin_[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def constructor_parameters(algorithm_class: type) -> dict[str, inspect.Parameter]:
    """
    The keyword arguments an algorithm's constructor accepts (our algorithms, like SB3's, list every keyword).

    :param algorithm_class: the algorithm's class
    :return: parameter name -> ``inspect.Parameter`` (with resolved annotations where possible)
    """
    init = algorithm_class.__init__  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable forward references: fall back on the raw annotations
        hints = {}
    return {
        name: parameter.replace(annotation=hints.get(name, parameter.annotation))
        for name, parameter in inspect.signature(init).parameters.items()
        if name != "self" and parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }


def _describe(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any value"
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    if origin is collections.abc.Callable:
        return "a callable"
    if origin is type:
        return "a class"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (permissive where the annotation is not a plain type)."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, (str, typing.ForwardRef)):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(annotation))
    if annotation is bool:
        return isinstance(value, (bool, np.bool_))
    if annotation is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if annotation is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return callable(value)
    if origin is type:
        return isinstance(value, type)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if isinstance(annotation, type):
        try:
            return isinstance(value, annotation)
        except TypeError:  # a Protocol that is not runtime-checkable: nothing to check against
            return True
    return True  # TypeVar, NewType, ...: do not second-guess


def _eval_zoo_string(text: str) -> Any:
    """Evaluate a string the way rl-zoo3 does for ``policy_kwargs`` (with ``nn``, ``th`` and ``np`` in scope)."""
    from sb3_trpo_ext.common.torch_layers import TRPOAtariCNN

    return eval(text, {"nn": nn, "th": th, "torch": th, "np": np, "TRPOAtariCNN": TRPOAtariCNN})


def _number_string_hint(key: str, value: Any, from_params: bool) -> str:
    """How to write a number that arrived as a string, in YAML or in ``-params`` (whose values are Python)."""
    if from_params:
        shown = value.strip() if isinstance(value, str) else "1e-3"
        return f" (-params evaluates each value as Python: write {key}:{shown}, without quotes)"
    return " (YAML reads numbers such as 1e-3 as strings: write !!float 1e-3 or 0.001)"


def _check_zoo_key(key: str, value: Any, from_params: bool = False) -> str | None:
    expected = ZOO_KEYS[key]
    if key == "n_timesteps":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        hint = _number_string_hint(key, value, from_params) if isinstance(value, str) else ""
        return None if ok else f"'n_timesteps' must be a positive number, got {value!r}{hint}"
    if key in ("n_envs", "frame_stack"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else f"{key!r} must be an integer >= 1, got {value!r} ({type(value).__name__})"
    if key == "normalize":
        return None if isinstance(value, (bool, dict, str)) else f"'normalize' must be a {expected}, got {value!r}"
    if key in ("env_kwargs",):
        return None if isinstance(value, dict) else f"{key!r} must be a dict, got {value!r} ({type(value).__name__})"
    if key == "monitor_kwargs":
        return None if isinstance(value, (dict, str)) else f"{key!r} must be a {expected}, got {value!r}"
    if not isinstance(value, (str, list, dict)) and value is not None:
        return f"{key!r} must be a {expected}, got {value!r} ({type(value).__name__})"
    return None


def _check_keyword(
    algorithm_class: type, key: str, value: Any, parameter: inspect.Parameter, from_params: bool = False
) -> str | None:
    annotation = parameter.annotation
    if key in SCHEDULE_KEYS and isinstance(value, str):
        if _LINEAR_SCHEDULE.match(value):
            return None
        hint = _number_string_hint(key, value, from_params) if _matches(_yaml_number(value), float) else ""
        return f"{key!r} must be a number or a linear schedule 'lin_<initial value>', got the string {value!r}{hint}"
    if key == "policy_kwargs" and isinstance(value, str):
        try:
            value = _eval_zoo_string(value)
        except Exception as error:
            return f"'policy_kwargs' string {value!r} does not evaluate: {type(error).__name__}: {error}"
        return None if isinstance(value, dict) else f"'policy_kwargs' must evaluate to a dict, got {value!r}"
    if key == "policy":
        if isinstance(value, str):
            aliases = getattr(algorithm_class, "policy_aliases", {})
            if "." in value or value in aliases:
                return None
            return f"'policy' must be one of {sorted(aliases)} or a dotted class path, got {value!r}"
        return None if isinstance(value, type) else f"'policy' must be a policy name or class, got {value!r}"
    if not _matches(value, annotation):
        hint = ""
        if annotation is int and isinstance(value, float) and float(value).is_integer():
            hint = f" (write it as the integer {int(value)})"
        elif isinstance(value, str) and _matches(_yaml_number(value), annotation):
            hint = _number_string_hint(key, value, from_params)
        return f"{key!r} must be {_describe(annotation)}, got {value!r} ({type(value).__name__}){hint}"
    return None


def _yaml_number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def check_hyperparams(
    algorithm_class: type,
    hyperparams: dict[str, Any],
    entry: str,
    source: str = "",
    require_n_timesteps: bool = False,
    overrides: dict[str, Any] | None = None,
) -> None:
    """
    Check one zoo hyperparameter entry: every key must be a zoo key or a constructor keyword, of the right type.

    :param algorithm_class: the algorithm the entry is for
    :param hyperparams: the entry (after rl-zoo3's ``-params`` overrides, before its pre-processing)
    :param entry: the entry's name (env id, ``atari`` or ``default``), for the message
    :param source: where the entry comes from (a file name), for the message
    :param require_n_timesteps: also require ``n_timesteps`` (rl-zoo3 needs it unless ``-n`` is given)
    :param overrides: the command line's ``-params`` (already in ``hyperparams``): problems with their keys are
        reported as ``-params``' own, with hints for its Python values instead of YAML's
    :raises HyperparameterError: naming the entry (or ``-params``) and each offending key
    """
    if not isinstance(hyperparams, dict):
        raise HyperparameterError(
            f"{_where(source, entry)}: an entry must be a mapping of keys to values, got {hyperparams!r}"
        )
    name = algorithm_class.__name__
    parameters = constructor_parameters(algorithm_class)
    accepted = sorted(key for key in parameters if not key.startswith("_") and key not in SET_FROM_COMMAND_LINE)
    problems: list[str] = []
    if "policy" not in hyperparams:
        problems.append(
            f"'policy' is missing (e.g. policy: 'MlpPolicy'; one of {sorted(getattr(algorithm_class, 'policy_aliases', {}))})"
        )
    if require_n_timesteps and "n_timesteps" not in hyperparams:
        problems.append("'n_timesteps' is missing (rl-zoo3 needs it unless -n is given)")
    override_problems: list[str] = []
    for key, value in hyperparams.items():
        from_params = overrides is not None and key in overrides
        problem = _check_key(algorithm_class, parameters, accepted, key, value, from_params)
        if problem:
            (override_problems if from_params else problems).append(problem)
    if problems or override_problems:
        sections = []
        if problems:
            sections.append(f"{_where(source, entry)}: invalid hyperparameters for {name}:\n{_listed(problems)}")
        if override_problems:
            sections.append(
                f"-params (the command line's overrides of {_where(source, entry)}): invalid hyperparameters for "
                f"{name}:\n{_listed(override_problems)}"
            )
        raise HyperparameterError(
            "\n".join(sections) + f"\nAccepted keywords of {name}: {', '.join(accepted)}; rl-zoo3 keys: {', '.join(ZOO_KEYS)}."
        )


def _check_key(
    algorithm_class: type,
    parameters: dict[str, inspect.Parameter],
    accepted: list[str],
    key: Any,
    value: Any,
    from_params: bool,
) -> str | None:
    """:return: what is wrong with one key of an entry (or of ``-params``), or ``None``"""
    name = algorithm_class.__name__
    if not isinstance(key, str):
        return f"key {key!r} is not a string"
    if key in ZOO_KEYS:
        return _check_zoo_key(key, value, from_params)
    if key in SET_FROM_COMMAND_LINE:
        return f"{key!r} is set by rl-zoo3 from the command line ({SET_FROM_COMMAND_LINE[key]}); remove it"
    if key in OFF_POLICY_ONLY:
        return f"{key!r} is an off-policy setting (action noise) that {name} does not take; remove it"
    if key in SETTINGS_FOR_OBJECTS and key in parameters:
        if value is None or isinstance(value, dict):
            return None
        example = "dict(n_actors=16)" if from_params else "{n_actors: 16}"
        return f"{key!r} must be a dict of {SETTINGS_FOR_OBJECTS[key]} keywords (e.g. {key}: {example}), got {value!r}"
    if key.startswith("_") or key not in parameters:
        close = difflib.get_close_matches(key, accepted + list(ZOO_KEYS), n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown keyword {key!r} for {name}{suggestion}"
    return _check_keyword(algorithm_class, key, value, parameters[key], from_params)


def _listed(problems: list[str]) -> str:
    return "\n".join(f"  - {problem}" for problem in problems)


def _where(source: str, entry: str) -> str:
    return f"{source}, entry {entry!r}" if source else f"entry {entry!r}"


def check_config_file(algorithm_class: type, path: str | Path) -> list[str]:
    """
    Check every entry of a zoo YAML file (names and types only; nothing is built).

    :param algorithm_class: the algorithm the file is for
    :param path: the YAML file
    :return: the names of the entries checked
    :raises HyperparameterError: on the first bad entry
    """
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise HyperparameterError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(entries, dict):
        raise HyperparameterError(f"{path}: expected a mapping of env ids to entries, got {type(entries).__name__}")
    for entry, hyperparams in entries.items():
        check_hyperparams(algorithm_class, hyperparams, str(entry), str(path), require_n_timesteps=True)
    return [str(entry) for entry in entries]


def main(argv: list[str] | None = None) -> int:
    """``python -m sb3_trpo_ext.zoo.checks [--algo KEY] FILE...``: check zoo YAML files without building anything."""
    from sb3_trpo_ext.zoo.registration import ZOO_KEYS, zoo_algorithms

    algorithms = zoo_algorithms()
    parser = argparse.ArgumentParser(description="Check zoo hyperparameter files against the algorithms' constructors.")
    parser.add_argument("files", nargs="+", help="YAML files; the algorithm is taken from the file name unless --algo")
    parser.add_argument("--algo", choices=sorted(algorithms), help="algorithm key for all files")
    args = parser.parse_args(argv)
    status = 0
    for file in args.files:
        key = args.algo or Path(file).stem
        if key not in algorithms:
            reason = "its algorithm is not available" if key in ZOO_KEYS else "cannot tell the algorithm (use --algo)"
            print(f"{file}: {reason}; available: {sorted(algorithms)}", file=sys.stderr)
            status = 1
            continue
        try:
            entries = check_config_file(algorithms[key], file)
        except HyperparameterError as error:
            print(error, file=sys.stderr)
            status = 1
        else:
            print(f"{file}: {len(entries)} entries OK for {algorithms[key].__name__}")
    return status


if __name__ == "__main__":
    sys.exit(main())
