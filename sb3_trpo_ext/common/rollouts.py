"""
Fast on-policy rollout collection that keeps every SB3 behaviour: :func:`collect_rollouts_fast`; and SB3's own loop
with hooks for policies that carry more than an observation (:func:`collect_sb3_style` with :class:`StepHooks`: the
maskable classes' action masks, the recurrent classes' LSTM states).

SB3's ``collect_rollouts`` runs the full actor-critic forward (building a ``torch.distributions`` object) once per
environment step. Here the policy is frozen for the rollout in a
:class:`~sb3_trpo_ext.common.rollout_policy.RolloutPolicy`, which draws actions from noise drawn up front and gives
their log-probabilities in closed form.

Callbacks see SB3's rollout locals at every step (``self``, ``obs_tensor``, ``actions``, ``values``, ``log_probs``,
``clipped_actions``, ``new_obs``, ``rewards``, ``dones``, ``infos``, ...; ``values`` and ``log_probs`` are tensors
as SB3's), then ``on_step`` (which can stop training). Actions have the action space's shape, Monitor infos go to the
info buffer, ``dones`` mark episode starts, ``VecNormalize`` is untouched (it lives in the env), and truncated
episodes are bootstrapped with the critic's value of the terminal observation (as SB3 does), in one batch at the end.

A non-finite observation stops collection with an error that names it
(:func:`~sb3_trpo_ext.common.rollout_policy.check_finite_observations`).
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.backends import Backends
from sb3_trpo_ext.common.rollout_policy import (
    Observation,
    RolloutNoise,
    RolloutPolicy,
    check_finite_observations,
    env_action_function,
    stack_observations,
)

AfterStep = Callable[[int, Observation], None]
"""``after_step(n, new_obs)``: called after rollout step ``n - 1`` (the envs are now in the state of step ``n``),
before the callback's ``on_step``."""


def collect(
    algorithm: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    after_step: AfterStep | None = None,
) -> bool:
    """
    Collect a rollout on the loop ``algorithm.backends.rollouts`` names: SB3's own
    ``OnPolicyAlgorithm.collect_rollouts`` (``"sb3"``) or :func:`collect_rollouts_fast` (same behaviour).

    :param after_step: an optional per-step hook (the vine's snapshots); SB3's loop calls it through
        :class:`AfterStepCallback`, its only per-step entry
    :return: False if a callback asked to stop, True otherwise (the other parameters: :func:`collect_rollouts_fast`)
    """
    if algorithm.backends.rollouts == "sb3":  # type: ignore[attr-defined]
        callback = callback if after_step is None else AfterStepCallback(callback, after_step)
        return OnPolicyAlgorithm.collect_rollouts(algorithm, env, callback, rollout_buffer, n_rollout_steps)
    return collect_rollouts_fast(algorithm, env, callback, rollout_buffer, n_rollout_steps, after_step)


def collect_rollouts_fast(
    algorithm: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    after_step: AfterStep | None = None,
) -> bool:
    """
    Fill ``rollout_buffer`` with ``n_rollout_steps`` steps per env, as ``OnPolicyAlgorithm.collect_rollouts`` does.

    :param algorithm: the algorithm (its policy, ``_last_obs``, ``num_timesteps``, ... are used and updated)
    :param env: the training environment
    :param callback: called after each step; returning False stops collection
    :param rollout_buffer: the buffer to fill
    :param n_rollout_steps: steps per environment
    :param after_step: called after each step, before the callback (:data:`AfterStep`)
    :return: False if a callback asked to stop, True otherwise
    """
    rollout_buffer.reset()
    # before the rollout's noise is drawn, as SB3 calls it before its first action: a callback that restores the
    # random generators there (a resumed run) or changes the policy acts on this rollout
    callback.on_rollout_start()
    rollout_policy = start_rollout(algorithm, env.num_envs, n_rollout_steps)
    is_discrete = isinstance(algorithm.action_space, spaces.Discrete)
    to_env, to_tensor = env_action_function(algorithm.policy, algorithm.action_space), tensor_converter(algorithm.device)
    plain_buffer = type(rollout_buffer) is RolloutBuffer and isinstance(algorithm.observation_space, spaces.Box)
    truncated_terminals: list[tuple[int, int, Observation]] = []

    for n_steps in range(n_rollout_steps):
        obs_tensor = to_tensor(algorithm._last_obs)
        actions, step_log_probs, step_values = rollout_policy(algorithm._last_obs, need_values=True)  # type: ignore[arg-type]
        values, log_probs = to_tensor(step_values.reshape(-1, 1)), to_tensor(step_log_probs)  # type: ignore[union-attr]
        clipped_actions = to_env(actions)
        new_obs, rewards, dones, infos = env.step(clipped_actions)
        check_finite_observations(new_obs, "after step", algorithm.num_timesteps // env.num_envs)  # type: ignore[arg-type]
        algorithm.num_timesteps += env.num_envs
        callback.update_locals(dict(  # SB3's rollout locals, by SB3's names
            self=algorithm, env=env, callback=callback, rollout_buffer=rollout_buffer, n_rollout_steps=n_rollout_steps,
            n_steps=n_steps, obs_tensor=obs_tensor, actions=actions, values=values, log_probs=log_probs,
            clipped_actions=clipped_actions, new_obs=new_obs, rewards=rewards, dones=dones, infos=infos,
        ))  # fmt: skip
        if after_step is not None:
            after_step(n_steps + 1, new_obs)  # type: ignore[arg-type]
        if not callback.on_step():
            return False
        algorithm._update_info_buffer(infos, dones)
        actions = actions.reshape(-1, 1) if is_discrete else actions
        truncated_terminals += [(n_steps, idx, terminal) for idx, terminal in truncations(dones, infos)]
        last_obs, starts = algorithm._last_obs, algorithm._last_episode_starts
        if plain_buffer:
            add_to_plain_buffer(rollout_buffer, last_obs, actions, rewards, starts, step_values, step_log_probs)  # type: ignore[arg-type]
        else:
            rollout_buffer.add(last_obs, actions, rewards, starts, values, log_probs)  # type: ignore[arg-type]
        algorithm._last_obs, algorithm._last_episode_starts = new_obs, dones  # type: ignore[assignment]

    bootstrap_truncations(rollout_buffer, truncated_terminals, rollout_policy, algorithm.gamma)
    last_values = th.as_tensor(rollout_policy.values(new_obs), device=algorithm.device)  # type: ignore[arg-type]
    rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
    callback.update_locals({"new_obs": new_obs, "dones": dones, "rollout_buffer": rollout_buffer})
    callback.on_rollout_end()
    return True


class AfterStepCallback(BaseCallback):
    """
    ``after_step`` inside SB3's own rollout loop, whose only per-step entry is the callback: the user's callback
    wrapped, ``after_step(n_steps + 1, new_obs)`` called from the loop's locals before the user's ``on_step``.
    Everything else is forwarded, so the user's callback sees exactly what it would see without the wrapper.

    :param callback: the user's callback
    :param after_step: the hook (:data:`AfterStep`)
    """

    def __init__(self, callback: BaseCallback, after_step: AfterStep) -> None:
        super().__init__()
        self.callback = callback
        self.after_step = after_step

    def update_locals(self, locals_: dict[str, Any]) -> None:
        self.locals = locals_
        self.callback.update_locals(locals_)

    def on_rollout_start(self) -> None:
        self.callback.on_rollout_start()

    def on_step(self) -> bool:
        self.after_step(self.locals["n_steps"] + 1, self.locals["new_obs"])
        return self.callback.on_step()

    def on_rollout_end(self) -> None:
        self.callback.on_rollout_end()

    def _on_step(self) -> bool:  # unused: on_step above forwards to the user's callback
        return True


class StepHooks:
    """
    What :func:`collect_sb3_style` asks of the policy, answered here as SB3 does for a feed-forward policy: the action
    drawn from the observation alone, a truncated episode bootstrapped with the critic's value of its last
    observation, the last value from the last observation. A subclass changes what its policy does differently
    (the state it carries from step to step, what it stores with a step), and shows that state to the callback.

    :param algorithm: the algorithm whose policy acts
    """

    def __init__(self, algorithm: OnPolicyAlgorithm) -> None:
        self.algorithm = algorithm
        self.policy = algorithm.policy
        self.truncation: dict[str, Any] = {}
        """The last truncation bootstrapped (``idx``, ``terminal``, ``terminal_value``): a loop's leftovers in its locals."""

    def act(self, obs_tensor: th.Tensor | dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """:return: the actions, the critic's values and the actions' log-probabilities (called under ``no_grad``)"""
        return self.policy(obs_tensor)

    def step_locals(self) -> dict[str, Any]:
        """:return: what the callback sees besides the loop's own locals (the state the policy carries)"""
        return dict(self.truncation)

    def buffer_extras(self) -> dict[str, Any]:
        """:return: the keywords the step's ``rollout_buffer.add`` takes besides SB3's"""
        return {}

    def bootstrap(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> np.ndarray:
        """:return: the rewards, each truncated episode's plus ``gamma V(terminal observation)`` (in place)"""
        for idx, terminal in truncations(dones, infos):
            with th.no_grad():
                terminal_value = self.policy.predict_values(self.policy.obs_to_tensor(terminal)[0])[0]  # type: ignore[arg-type]
            rewards[idx] += self.algorithm.gamma * float(terminal_value)
            self.truncation = {"idx": idx, "terminal": terminal, "terminal_value": terminal_value}
        return rewards

    def advance(self) -> None:
        """Called once the step is stored: the state the policy carries becomes the next step's."""

    def last_values(self, last_obs: Observation, dones: np.ndarray) -> th.Tensor:
        """:return: the critic's values of the observations after the rollout's last step"""
        with th.no_grad():
            return self.policy.predict_values(obs_as_tensor(last_obs, self.algorithm.device))  # type: ignore[arg-type]


def collect_sb3_style(
    algorithm: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    hooks: StepHooks,
) -> bool:
    """
    SB3's ``OnPolicyAlgorithm.collect_rollouts`` (gSDE noise resets, Box actions clipped or unsquashed, Monitor
    infos, truncations bootstrapped, GAE at the end) with ``hooks`` doing the policy's part. After each step and at
    the end the callback sees the loop's locals (SB3's names, ``self`` the algorithm) and the hooks' step_locals.

    :param rollout_buffer: the buffer to fill, one whose ``add`` takes :meth:`StepHooks.buffer_extras`
    :param hooks: the policy's part of each step
    :return: False if a callback asked to stop, True otherwise (the other parameters: :func:`collect_rollouts_fast`)
    """
    assert algorithm._last_obs is not None, "No previous observation was provided"
    policy = algorithm.policy
    policy.set_training_mode(False)
    rollout_buffer.reset()
    if algorithm.use_sde:
        policy.reset_noise(env.num_envs)
    callback.on_rollout_start()
    is_discrete = isinstance(algorithm.action_space, spaces.Discrete)
    to_env, dones = env_action_function(policy, algorithm.action_space), algorithm._last_episode_starts

    for n_steps in range(n_rollout_steps):
        if algorithm.use_sde and algorithm.sde_sample_freq > 0 and n_steps % algorithm.sde_sample_freq == 0:
            policy.reset_noise(env.num_envs)
        with th.no_grad():
            obs_tensor = obs_as_tensor(algorithm._last_obs, algorithm.device)  # type: ignore[arg-type]
            actions_tensor, values, log_probs = hooks.act(obs_tensor)
        actions = actions_tensor.cpu().numpy()
        clipped_actions = to_env(actions)
        new_obs, rewards, dones, infos = env.step(clipped_actions)
        algorithm.num_timesteps += env.num_envs
        callback.update_locals({"self": algorithm, **locals(), **hooks.step_locals()})
        if not callback.on_step():
            return False
        algorithm._update_info_buffer(infos, dones)
        rewards = hooks.bootstrap(rewards, dones, infos)
        rollout_buffer.add(  # type: ignore[call-arg]
            algorithm._last_obs,  # type: ignore[arg-type]
            actions.reshape(-1, 1) if is_discrete else actions,
            rewards,
            algorithm._last_episode_starts,  # type: ignore[arg-type]
            values,
            log_probs,
            **hooks.buffer_extras(),
        )
        hooks.advance()
        algorithm._last_obs, algorithm._last_episode_starts = new_obs, dones  # type: ignore[assignment]

    last_values = hooks.last_values(algorithm._last_obs, dones)  # type: ignore[arg-type]
    rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)  # type: ignore[arg-type]
    callback.update_locals({"self": algorithm, **locals(), **hooks.step_locals()})
    callback.on_rollout_end()
    return True


def start_rollout(algorithm: OnPolicyAlgorithm, n_envs: int, n_rollout_steps: int) -> RolloutPolicy:
    """
    The policy in evaluation mode, frozen for the rollout with its noise drawn (gSDE: ``reset_noise`` as SB3 does,
    though the rollout draws its own exploration matrices, one per env), on the paths of ``algorithm.backends``.
    """
    assert algorithm._last_obs is not None, "No previous observation was provided"
    check_finite_observations(algorithm._last_obs, "at the start of the rollout")  # type: ignore[arg-type]
    policy = algorithm.policy
    policy.set_training_mode(False)
    if algorithm.use_sde:
        policy.reset_noise(n_envs)
    sde_sample_freq = algorithm.sde_sample_freq if algorithm.use_sde else -1
    noise = RolloutNoise.draw(policy, n_envs, n_rollout_steps, sde_sample_freq)
    backends: Backends = algorithm.backends  # type: ignore[attr-defined]
    return RolloutPolicy(policy, noise, backends, getattr(algorithm, "mlp_plan", None))


def tensor_converter(device: th.device) -> Callable[[Any], Any]:
    """What ``obs_as_tensor`` gives, minus its dispatch overhead on the CPU (arrays and dicts of arrays)."""
    if device.type != "cpu":
        return lambda array: obs_as_tensor(array, device)

    def to_tensor(array: Any) -> Any:
        if isinstance(array, dict):
            return {key: th.from_numpy(np.asarray(value)) for key, value in array.items()}
        return th.from_numpy(array)

    return to_tensor


def truncations(dones: np.ndarray, infos: list[dict[str, Any]]) -> list[tuple[int, Observation]]:
    """:return: ``(env index, terminal observation)`` of each episode that a time limit cut (not terminated)"""
    return [
        (idx, infos[idx]["terminal_observation"])
        for idx, done in enumerate(dones)
        if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False)
    ]


def bootstrap_truncations(
    buffer: RolloutBuffer, truncated: list[tuple[int, int, Observation]], rollout_policy: RolloutPolicy, gamma: float
) -> None:
    """
    Add ``gamma V(terminal observation)`` to the reward of each truncated step (as SB3 does), one critic batch.

    :param buffer: the rollout buffer
    :param truncated: ``(step, env index, terminal observation)`` of each truncation
    :param rollout_policy: the rollout's policy (its critic)
    :param gamma: the discount factor
    """
    if not truncated:
        return
    terminal_values = rollout_policy.values(stack_observations([terminal for _, _, terminal in truncated]))
    for (step, idx, _), terminal_value in zip(truncated, terminal_values, strict=True):
        buffer.rewards[step, idx] += gamma * float(terminal_value)


def add_to_plain_buffer(
    buffer: RolloutBuffer,
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    episode_starts: np.ndarray,
    values: np.ndarray,
    log_probs: np.ndarray,
) -> None:
    """
    What ``RolloutBuffer.add`` does, without its per-step tensor round trips, for a plain ``RolloutBuffer`` on a Box
    observation space. The one place that writes SB3's buffer fields directly (``observations``, ``actions``,
    ``rewards``, ``episode_starts``, ``values``, ``log_probs``, ``pos``, ``full``; tested against ``add`` in
    ``tests/test_run.py``).

    :param buffer: the buffer
    :param obs: observations, one per env
    :param actions: actions, one per env (any shape with ``action_dim`` values per env)
    :param rewards: rewards
    :param episode_starts: whether each observation starts an episode
    :param values: the critic's values of the observations
    :param log_probs: the log-probabilities of the actions
    """
    pos = buffer.pos
    buffer.observations[pos] = obs
    buffer.actions[pos] = actions.reshape(buffer.actions.shape[1:])
    buffer.rewards[pos] = rewards
    buffer.episode_starts[pos] = episode_starts
    buffer.values[pos] = values
    buffer.log_probs[pos] = log_probs
    buffer.pos += 1
    buffer.full = buffer.pos == buffer.buffer_size
