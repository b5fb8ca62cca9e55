"""
The VecEnv wrappers' effect on branch transitions: :class:`BranchTransform` replays ``VecFrameStack``,
``VecTransposeImage`` and ``VecNormalize`` (with frozen statistics) on the observations and rewards of branch
rollouts, so the policy and the critic see a branch as they see the trunk. Plain data, shipped to the worker that runs
a wave (:class:`~sb3_trpo_ext.vine.branches.Wave`).

The one read of SB3's private ``VecFrameStack.stacked_obs`` is :func:`frame_stack_parts` (tested in
``tests/test_vine.py``).
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecFrameStack, VecMonitor, VecNormalize, VecTransposeImage

SUPPORTED_VEC_WRAPPERS = (VecNormalize, VecTransposeImage, VecFrameStack, VecMonitor)


def frame_stack_parts(wrapper: VecFrameStack) -> list[tuple[str | None, Any]]:
    """
    The stacks of a ``VecFrameStack`` (SB3 internal: ``VecFrameStack.stacked_obs``): one for a Box observation space
    (key ``None``), one per key for a Dict space (``StackedObservations.sub_stacked_observations``).

    :param wrapper: the ``VecFrameStack``
    :return: ``(key, StackedObservations)`` pairs, each holding a Box's ``stacked_obs`` and ``channels_first``
    """
    stacked = wrapper.stacked_obs
    subs = getattr(stacked, "sub_stacked_observations", None)
    return [(None, stacked)] if subs is None else list(subs.items())


def frame_stack_state(wrapper: VecFrameStack, index: int) -> list[tuple[str | None, np.ndarray, int]]:
    """
    One env's frame-stack buffers and the axis frames are stacked on.

    :param wrapper: the ``VecFrameStack``
    :param index: the env index
    :return: per stack (see :func:`frame_stack_parts`): its key, a copy of the env's buffer, and the stacking axis of a
        batch of observations
    """
    return [
        (key, part.stacked_obs[index].copy(), 1 if part.channels_first else -1) for key, part in frame_stack_parts(wrapper)
    ]


@dataclass
class BranchTransform:
    """
    The VecEnv wrappers' observation and reward transforms, replayed on branch transitions with frozen statistics,
    as plain data that can be shipped to a worker.

    :param steps: from the innermost wrapper out: ``("frame_stack", (key or None, axis))`` (one per stacked Dict key),
        ``("transpose", image keys or None)``,
        ``("normalize", VecNormalize)`` (pickled without its venv, so only its statistics travel)
    """

    steps: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, venv: VecEnv) -> "BranchTransform":
        """
        :param venv: the training environment
        :return: its wrappers' transforms
        :raises ValueError: for a VecEnv wrapper whose effect cannot be replayed
        """
        steps: list[tuple[str, Any]] = []
        wrapper = venv
        while isinstance(wrapper, VecEnvWrapper):
            if isinstance(wrapper, VecFrameStack):  # reversed below: keep each wrapper's keys in order
                steps.extend(reversed([("frame_stack", (key, axis)) for key, _, axis in frame_stack_state(wrapper, 0)]))
            elif isinstance(wrapper, VecTransposeImage):
                if not wrapper.skip:  # a skipped VecTransposeImage leaves observations as they are
                    steps.append(("transpose", getattr(wrapper, "image_space_keys", None)))
            elif isinstance(wrapper, VecNormalize):
                steps.append(("normalize", wrapper))
            elif not isinstance(wrapper, VecMonitor):
                names = ", ".join(w.__name__ for w in SUPPORTED_VEC_WRAPPERS)
                raise ValueError(
                    f"VineTRPO cannot replay the VecEnv wrapper {type(wrapper).__name__} in branch rollouts; "
                    f"supported are {names}. Move its logic into a gymnasium wrapper of each env."
                )
            wrapper = wrapper.venv
        return cls(list(reversed(steps)))

    @staticmethod
    def frame_stacks(venv: VecEnv, index: int) -> list[np.ndarray]:
        """:param venv: the training environment
        :param index: env index
        :return: the current frame-stack buffers of that env, innermost first"""
        stacks = []
        wrapper = venv
        while isinstance(wrapper, VecEnvWrapper):
            if isinstance(wrapper, VecFrameStack):
                stacks.extend(reversed([buffer for _, buffer, _ in frame_stack_state(wrapper, index)]))
            wrapper = wrapper.venv
        return list(reversed(stacks))

    def __call__(self, obs: Any, rewards: np.ndarray, stacks: list[np.ndarray]) -> tuple[Any, np.ndarray, list[np.ndarray]]:
        """
        :param obs: raw observations of a batch of branches
        :param rewards: raw rewards
        :param stacks: the branches' frame-stack buffers (updated copies are returned)
        :return: the observations and rewards as the policy and critic see them, and the new stacks
        """
        new_stacks: list[np.ndarray] = []
        for kind, setting in self.steps:
            if kind == "frame_stack":
                key, axis = setting
                stacked = stacks[len(new_stacks)]
                frame = obs if key is None else obs[key]
                frame = np.concatenate([np.delete(stacked, np.s_[: frame.shape[axis]], axis=axis), frame], axis=axis)
                obs = frame if key is None else {**obs, key: frame}
                new_stacks.append(frame)
            elif kind == "transpose":
                if setting is None:
                    obs = VecTransposeImage.transpose_image(obs)
                else:
                    obs = {k: VecTransposeImage.transpose_image(v) if k in setting else v for k, v in obs.items()}
            else:
                obs = setting.normalize_obs(obs)
                rewards = setting.normalize_reward(rewards)
        return obs, rewards, new_stacks
