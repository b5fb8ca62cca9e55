"""
The code that runs inside a Ray actor of :class:`~sb3_trpo_ext.distributed.RayVecEnv`: a group of environments
stepped in a loop, one remote call per vectorised step.

:class:`EnvGroup` is a plain class; :class:`~sb3_trpo_ext.distributed.RayVecEnv` turns it into an actor with
``ray.remote``. Everything it returns is picklable numpy arrays, dicts and lists, so a step result crosses the object
store in one message per actor. The semantics of every method are those of SB3's ``DummyVecEnv`` for one env.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import cloudpickle
import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.patch_gym import _patch_env
from stable_baselines3.common.vec_env.util import obs_space_info

EnvSource = str | Callable[..., gym.Env]
"""An env id for ``gymnasium.make`` or a function that returns an env."""


class StepResult(NamedTuple):
    """What one actor returns for one vectorised step of its envs."""

    observations: dict[Any, np.ndarray]
    """The observations after the step (after the auto-reset for done envs), stacked per key of ``obs_space_info``."""
    rewards: np.ndarray
    dones: np.ndarray
    infos: list[dict[str, Any]]
    reset_infos: dict[int, dict[str, Any]]
    """The reset infos of the envs that were reset, by local index."""
    env_seconds: float
    """Time spent in the envs' ``step`` and ``reset`` calls (the simulation), without the round trip."""


def build_env(source: EnvSource, rank: int, env_kwargs: dict[str, Any], seed: int | None, monitor: bool) -> gym.Env:
    """
    Build one env the way SB3's ``make_vec_env`` does.

    :param source: an env id (``gymnasium.make(source, render_mode="rgb_array", **env_kwargs)``, without the default
        render mode when the env refuses it) or a function called as ``source(**env_kwargs)``
    :param rank: the env's index in the vectorised env
    :param env_kwargs: keyword arguments of the env
    :param seed: when not None, the action space is seeded with ``seed + rank`` (the env itself at the first reset)
    :param monitor: wrap the env in SB3's ``Monitor`` (episode returns and lengths in the infos)
    :return: the env
    """
    if isinstance(source, str):
        try:
            env = gym.make(source, **{"render_mode": "rgb_array", **env_kwargs})
        except TypeError:
            env = gym.make(source, **env_kwargs)
    else:
        env = _patch_env(source(**env_kwargs))
    if seed is not None:
        env.action_space.seed(seed + rank)
    return Monitor(env) if monitor else env


def stack_observations(observations: Sequence[Any], keys: list[Any]) -> dict[Any, np.ndarray]:
    """
    :param observations: one observation per env (array, dict or tuple)
    :param keys: the keys of ``obs_space_info`` (``[None]`` for a plain space)
    :return: the observations stacked per key
    """
    if keys == [None]:
        return {None: np.stack(observations)}
    return {key: np.stack([observation[key] for observation in observations]) for key in keys}


class EnvGroup:
    """
    Several environments of one :class:`~sb3_trpo_ext.distributed.RayVecEnv`, living in one Ray actor.

    :param payloads: one cloudpickled zero-argument env builder per env
    """

    def __init__(self, payloads: list[bytes]) -> None:
        self.envs: list[gym.Env] = [cloudpickle.loads(payload)() for payload in payloads]
        if len({id(env.unwrapped) for env in self.envs}) != len(self.envs):
            raise ValueError(
                "The env function returned the same env instance twice: it must build a new env at every call "
                "(e.g. gymnasium.make(...) inside the function), not return one made outside it."
            )
        self.keys = obs_space_info(self.envs[0].observation_space)[0]

    def describe(self) -> dict[str, Any]:
        """:return: the spaces and where this actor runs (node id, node IP, process id)"""
        import ray

        return {
            "observation_space": self.envs[0].observation_space,
            "action_space": self.envs[0].action_space,
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
        }

    def step(self, actions: Any) -> StepResult:
        """
        Step every env with its action, resetting the done ones as ``DummyVecEnv`` does.

        :param actions: the actions of this group's envs, first axis the env
        :return: the stacked results
        """
        start = time.perf_counter()
        observations, rewards, dones, infos = [], [], [], []
        reset_infos: dict[int, dict[str, Any]] = {}
        for index, env in enumerate(self.envs):
            observation, reward, terminated, truncated, info = env.step(actions[index])
            done = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if done:
                info["terminal_observation"] = observation
                observation, reset_infos[index] = env.reset()
            observations.append(observation)
            rewards.append(reward)
            dones.append(done)
            infos.append(info)
        seconds = time.perf_counter() - start
        stacked = stack_observations(observations, self.keys)
        return StepResult(stacked, np.asarray(rewards), np.asarray(dones, dtype=bool), infos, reset_infos, seconds)

    def reset(self, seeds: list[int | None], options: list[dict[str, Any]]) -> tuple[dict[Any, np.ndarray], list[dict]]:
        """
        :param seeds: one seed (or None) per env
        :param options: one options dict per env (an empty dict passes no options)
        :return: the stacked observations and the reset infos
        """
        observations, reset_infos = [], []
        for env, seed, option in zip(self.envs, seeds, options, strict=True):
            maybe_options = {"options": option} if option else {}
            observation, reset_info = env.reset(seed=seed, **maybe_options)
            observations.append(observation)
            reset_infos.append(reset_info)
        return stack_observations(observations, self.keys), reset_infos

    def call(self, operation: str, indices: list[int], name: str | None, args: tuple, kwargs: dict[str, Any]) -> list[Any]:
        """
        Apply one of the VecEnv's per-env operations to some envs of this group.

        :param operation: ``env_method``, ``get_attr``, ``has_attr``, ``set_attr``, ``is_wrapped`` or ``render``
        :param indices: local indices of the envs
        :param name: the method or attribute name (unused by ``is_wrapped`` and ``render``)
        :param args: positional arguments (``set_attr``: the value; ``is_wrapped``: the wrapper class)
        :param kwargs: keyword arguments of ``env_method``
        :return: one result per index
        """
        attribute = name or ""
        operations: dict[str, Callable[[gym.Env], Any]] = {
            "env_method": lambda env: env.get_wrapper_attr(attribute)(*args, **kwargs),
            "get_attr": lambda env: env.get_wrapper_attr(attribute),
            "has_attr": partial(_has_attr, name=attribute),
            "set_attr": lambda env: setattr(env, attribute, args[0]),
            "is_wrapped": lambda env: is_wrapped(env, args[0]),
            "render": lambda env: env.render(),
        }
        if operation not in operations:
            raise ValueError(f"Unknown operation {operation!r}: expected one of {sorted(operations)}")
        return [operations[operation](self.envs[index]) for index in indices]

    def close(self) -> None:
        """Close every env (errors are ignored: the actor is killed next)."""
        for env in self.envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing is best effort, the process ends next
                pass


def _has_attr(env: gym.Env, name: str) -> bool:
    try:
        env.get_wrapper_attr(name)
        return True
    except AttributeError:
        return False
