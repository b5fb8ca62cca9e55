"""
Rollouts with action masks: each state's mask is read from the environment before its action is drawn, the action is
drawn from the masked distribution, and the mask is stored with the state in sb3-contrib's maskable rollout buffer.

Masks come from the environment's ``action_masks()`` method (sb3-contrib's ``ActionMasker`` wrapper provides one):
``get_action_masks`` reads it through the VecEnv (``env_method``, so ``SubprocVecEnv`` works). With a VecEnv's
automatic reset the environment's state after an episode's last step is the next episode's first, which is the
observation stored next: the mask read there is that state's.
"""

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.rollouts import truncations

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
    assert algorithm._last_obs is not None, "No previous observation was provided"
    policy = algorithm.policy
    policy.set_training_mode(False)
    is_discrete = isinstance(algorithm.action_space, spaces.Discrete)
    action_masks: np.ndarray | None = None
    rollout_buffer.reset()
    callback.on_rollout_start()

    for n_steps in range(n_rollout_steps):  # noqa: B007 (n_steps: one of SB3's rollout locals the callback sees)
        with th.no_grad():
            obs_tensor = obs_as_tensor(algorithm._last_obs, algorithm.device)  # type: ignore[arg-type]
            if use_masking:
                action_masks = get_action_masks(env)  # the mask of the state the action is drawn in
            actions, values, log_probs = policy(obs_tensor, action_masks=action_masks)
        actions = actions.cpu().numpy()
        new_obs, rewards, dones, infos = env.step(actions)
        algorithm.num_timesteps += env.num_envs
        callback.update_locals(locals())
        if not callback.on_step():
            return False
        algorithm._update_info_buffer(infos, dones)
        for idx, terminal in truncations(dones, infos):  # a time limit cut the episode: bootstrap with the critic
            with th.no_grad():
                terminal_value = policy.predict_values(policy.obs_to_tensor(terminal)[0])[0]
            rewards[idx] += algorithm.gamma * float(terminal_value)
        rollout_buffer.add(  # type: ignore[call-arg]
            algorithm._last_obs,  # type: ignore[arg-type]
            actions.reshape(-1, 1) if is_discrete else actions,
            rewards,
            algorithm._last_episode_starts,  # type: ignore[arg-type]
            values,
            log_probs,
            action_masks=action_masks,
        )
        algorithm._last_obs, algorithm._last_episode_starts = new_obs, dones  # type: ignore[assignment]

    with th.no_grad():  # the value of the state after the last step (no mask needed: only its value)
        last_values = policy.predict_values(obs_as_tensor(new_obs, algorithm.device))  # type: ignore[arg-type]
    rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
    callback.update_locals(locals())
    callback.on_rollout_end()
    return True
