"""
Rollouts with action masks: each state's mask is read from the environment before its action is drawn, the action is
drawn from the masked distribution, and the mask is stored with the state in sb3-contrib's maskable rollout buffer.

Masks come from the environment's ``action_masks()`` method (sb3-contrib's ``ActionMasker`` wrapper provides one):
``get_action_masks`` reads it through the VecEnv (``env_method``, so ``SubprocVecEnv`` works). With a VecEnv's
automatic reset the environment's state after an episode's last step is the next episode's first, which is the
observation stored next: the mask read there is that state's.
"""

from typing import Any

import numpy as np
import torch as th
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.rollouts import StepHooks, collect_sb3_style

NO_MASKS_ERROR = (
    "The environment gives no action masks: wrap it in sb3_contrib.common.wrappers.ActionMasker(env, mask_fn) or give "
    "it an action_masks() method; or learn without masks: learn(..., use_masking=False)."
)


def collect_masked_rollouts(
    algorithm: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    use_masking: bool = True,
) -> bool:
    """
    Fill ``rollout_buffer`` with ``n_rollout_steps`` steps per env, as SB3's ``collect_rollouts`` does (callback locals,
    Monitor infos, truncated episodes bootstrapped with the critic, GAE at the end), with each state's action mask.

    :param algorithm: the algorithm (its maskable policy, ``_last_obs``, ``num_timesteps``, ... are used and updated)
    :param env: the training environment
    :param callback: called after each step; returning False stops collection
    :param rollout_buffer: a maskable rollout buffer
    :param n_rollout_steps: steps per environment
    :param use_masking: read and apply the environment's masks (False: every action valid, as an unmasked policy)
    :return: False if a callback asked to stop, True otherwise
    :raises ValueError: masks asked for from an environment that gives none
    """
    if not isinstance(rollout_buffer, (MaskableRolloutBuffer, MaskableDictRolloutBuffer)):
        raise TypeError(
            f"Masked rollouts need sb3-contrib's MaskableRolloutBuffer or MaskableDictRolloutBuffer (or a subclass), got "
            f"{type(rollout_buffer).__name__}."
        )
    if use_masking and not is_masking_supported(env):
        raise ValueError(NO_MASKS_ERROR)
    return collect_sb3_style(
        algorithm, env, callback, rollout_buffer, n_rollout_steps, MaskedStepHooks(algorithm, env, use_masking)
    )


class MaskedStepHooks(StepHooks):
    """
    A maskable policy's part of SB3's rollout loop: each step's mask read before its action is drawn, the action drawn
    from the masked distribution, the mask stored with the step (the last value needs no mask: only its value).

    :param algorithm: the algorithm whose maskable policy acts
    :param env: the training environment (its ``action_masks()``)
    :param use_masking: read and apply the masks (False: every action valid)
    """

    def __init__(self, algorithm: OnPolicyAlgorithm, env: VecEnv, use_masking: bool) -> None:
        super().__init__(algorithm)
        self.env, self.use_masking = env, use_masking
        self.action_masks: np.ndarray | None = None

    def act(self, obs_tensor: th.Tensor | dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        if self.use_masking:
            self.action_masks = get_action_masks(self.env)  # the mask of the state the action is drawn in
        return self.policy(obs_tensor, action_masks=self.action_masks)

    def step_locals(self) -> dict[str, Any]:
        return {**super().step_locals(), "action_masks": self.action_masks, "use_masking": self.use_masking}

    def buffer_extras(self) -> dict[str, Any]:
        return {"action_masks": self.action_masks}
