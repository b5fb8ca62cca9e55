"""
``RecurrentTRPO`` and ``RecurrentNaturalPG``: ``TRPO`` and ``NaturalPG`` with sb3-contrib's LSTM policies.

What differs from the feed-forward classes is all in :class:`RecurrentMixin`: the policies it takes (sb3-contrib's
``MlpLstmPolicy``, ``CnnLstmPolicy``, ``MultiInputLstmPolicy``), the rollout buffer (sb3-contrib's recurrent buffers,
which store the LSTM states), the rollouts (each env's LSTM state carried along and reset at episode starts; a
truncated episode bootstrapped with that env's own critic state), the policy batch (padded sequences with their
mask: :class:`~sb3_trpo_ext.recurrent.sequence_batch.SequenceBatch`) and the critic fit (on sequences). The step rule
is the feed-forward class's, and the trust-region step the engine's (:mod:`sb3_trpo_ext.common.base`).
"""

import inspect
from functools import partial
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
    RNNStates,
)
from sb3_contrib.ppo_recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import MaybeCallback, RolloutBufferSamples
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.base import NaturalGradientAlgorithm, zero_observation
from sb3_trpo_ext.common.critic import optimizer_steps
from sb3_trpo_ext.common.rollout_policy import Observation, stack_observations
from sb3_trpo_ext.common.rollouts import StepHooks, collect_sb3_style, truncations
from sb3_trpo_ext.npg.npg import NaturalPG
from sb3_trpo_ext.recurrent.sequence_batch import SequenceBatch, starts_folded
from sb3_trpo_ext.trpo.trpo import TRPO

SelfRecurrent = TypeVar("SelfRecurrent", bound="RecurrentMixin")

RECURRENT_BUFFERS = (RecurrentRolloutBuffer, RecurrentDictRolloutBuffer)


class RecurrentMixin(NaturalGradientAlgorithm):
    """
    The recurrent parts, mixed in before ``TRPO`` or ``NaturalPG`` (``class RecurrentTRPO(RecurrentMixin, TRPO)``).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": MlpLstmPolicy,
        "CnnLstmPolicy": CnnLstmPolicy,
        "MultiInputLstmPolicy": MultiInputLstmPolicy,
    }
    policy: RecurrentActorCriticPolicy  # type: ignore[assignment]
    rollout_buffer: RecurrentRolloutBuffer | RecurrentDictRolloutBuffer  # type: ignore[assignment]

    def _setup_model(self) -> None:
        buffer_class, buffer_kwargs = self.rollout_buffer_class, self.rollout_buffer_kwargs
        if buffer_class is not None and not issubclass(buffer_class, RECURRENT_BUFFERS):
            raise ValueError(
                f"{type(self).__name__} needs a recurrent rollout buffer (it stores the LSTM states): "
                "rollout_buffer_class must subclass sb3_contrib's RecurrentRolloutBuffer or RecurrentDictRolloutBuffer, "
                f"got {buffer_class.__name__}."
            )
        if self.precision == "bfloat16":
            raise ValueError(f"{type(self).__name__} runs in float32 only: pass precision='auto' or 'float32'.")
        # the engine builds the policy, the trust region and the backends (an LSTM policy is not stock: SB3's code for
        # every part, the Fisher by double back-propagation); its feed-forward buffer is replaced below
        self.rollout_buffer_class, self.rollout_buffer_kwargs = None, {}
        super()._setup_model()
        if not isinstance(self.policy, RecurrentActorCriticPolicy):
            raise TypeError(
                f"{type(self).__name__} needs a recurrent policy (sb3-contrib's MlpLstmPolicy, CnnLstmPolicy, "
                f"MultiInputLstmPolicy or a RecurrentActorCriticPolicy subclass), got {type(self.policy).__name__}; "
                f"for a feed-forward policy use {type(self).__name__.removeprefix('Recurrent')}."
            )
        if buffer_class is None:
            buffer_class = (
                RecurrentDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else RecurrentRolloutBuffer
            )
        self.rollout_buffer_class, self.rollout_buffer_kwargs = buffer_class, buffer_kwargs
        lstm = self.policy.lstm_actor
        state_shape = (lstm.num_layers, self.n_envs, lstm.hidden_size)
        self.rollout_buffer = buffer_class(  # type: ignore[call-arg]
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, *state_shape),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **buffer_kwargs,
        )

        def zeros() -> th.Tensor:
            return th.zeros(state_shape, device=self.device)

        self._last_lstm_states = RNNStates((zeros(), zeros()), (zeros(), zeros()))
        """Each env's actor and critic LSTM states after its last observation (not saved: a loaded model starts fresh)."""

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_lstm_states"]

    def _probe_distribution(self) -> Distribution:
        """The policy's distribution on one all-zeros observation from zero LSTM states (the actor's parameters)."""
        if not isinstance(self.policy, RecurrentActorCriticPolicy):
            return super()._probe_distribution()  # refused, with the fix, once the engine's set-up returns
        lstm = self.policy.lstm_actor
        zeros = th.zeros(lstm.num_layers, 1, lstm.hidden_size, device=self.device)
        observation = self.policy.obs_to_tensor(zero_observation(self.observation_space))[0]
        distribution, _ = self.policy.get_distribution(observation, (zeros, zeros), th.zeros(1, device=self.device))  # type: ignore[arg-type]
        return distribution

    # ------------------------------------------------------------------ rollouts

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect ``n_rollout_steps`` steps per environment, carrying each env's LSTM states from step to step (the
        policy resets them where an episode starts) and storing in the buffer the states each step started from: SB3's
        loop (``sb3_trpo_ext.common.rollouts.collect_sb3_style``) with ``LstmStepHooks``.

        :param env: the training environment
        :param callback: callback called at each step (with SB3's rollout locals)
        :param rollout_buffer: a recurrent rollout buffer to fill
        :param n_rollout_steps: number of experiences to collect per environment
        :return: True if collection finished, False if a callback stopped it
        """
        assert isinstance(rollout_buffer, RECURRENT_BUFFERS), f"{type(rollout_buffer).__name__} stores no LSTM states"
        return collect_sb3_style(self, env, callback, rollout_buffer, n_rollout_steps, LstmStepHooks(self))

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        """Update the policy with one natural-gradient step on the rollout's sequences, then fit the critic on them."""
        data = cast(RecurrentRolloutBufferSamples, next(self.rollout_buffer.get(batch_size=None)))
        actions = data.actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else data.actions
        batch = SequenceBatch.from_rollout(
            data.observations,
            actions,
            data.advantages,
            data.lstm_states.pi,  # type: ignore[arg-type]
            data.episode_starts,
            data.mask,
            self.sub_sampling_factor,
            self.normalize_advantage,
        )
        self._update(batch, data)  # type: ignore[arg-type]

    def _fit_critic(self, data: RolloutBufferSamples) -> list[float]:
        """
        Fit the critic on sequences: ``n_critic_updates`` epochs over the recurrent buffer's mini-batches of
        ``batch_size`` steps (cut into sequences, each started from the critic's stored LSTM state), the squared error
        averaged over real steps. Only the critic moves: the gradients of the actor's parameters (a features
        extractor shared with it included) are dropped before each Adam step, as the feed-forward fit does.

        :param data: unused (the fit draws its own mini-batches of sequences from the buffer)
        :return: the mini-batch losses
        """
        if not th.isfinite(th.as_tensor(self.rollout_buffer.returns)).all():
            return []
        epochs = (self.rollout_buffer.get(self.batch_size) for _ in range(self.n_critic_updates))
        losses = (partial(self._sequence_critic_loss, sequences) for epoch in epochs for sequences in epoch)
        return optimizer_steps(self.policy.optimizer, losses, frozen=self._actor_params)

    def _sequence_critic_loss(self, sequences: RecurrentRolloutBufferSamples | RecurrentDictRolloutBufferSamples) -> th.Tensor:
        """:return: the critic's squared error on a mini-batch of sequences, averaged over its real steps"""
        states, starts = starts_folded(sequences.lstm_states.vf, sequences.episode_starts)  # type: ignore[arg-type]
        values = self.policy.predict_values(sequences.observations, states, starts).flatten()  # type: ignore[arg-type]
        mask = sequences.mask > 0
        return ((values - sequences.returns)[mask] ** 2).mean()

    def learn(
        self: SelfRecurrent,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRecurrent:
        """
        Train for ``total_timesteps`` environment steps.

        :param total_timesteps: the number of steps to train for
        :param callback: callback(s) called at every step
        :param log_interval: log every ``log_interval`` iterations
        :param tb_log_name: the run's name in tensorboard (default: the class name)
        :param reset_num_timesteps: whether to reset the step counter (False continues a previous ``learn``)
        :param progress_bar: display a progress bar (needs tqdm and rich)
        :return: the trained model
        """
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)


class LstmStepHooks(StepHooks):
    """
    An LSTM policy's part of SB3's rollout loop: each env's actor and critic states carried from step to step (the
    policy resets them where an episode starts), the states each step started from stored with it, a truncated
    episode bootstrapped from its env's own critic state after the episode's last step, and so is the last value.

    :param algorithm: the recurrent algorithm (its ``_last_lstm_states`` are read, and updated as the steps are stored)
    """

    algorithm: RecurrentMixin
    policy: RecurrentActorCriticPolicy

    def __init__(self, algorithm: RecurrentMixin) -> None:
        super().__init__(algorithm)
        self.lstm_states = algorithm._last_lstm_states
        """The states after the current step's observation (the next step starts from them)."""
        self.episode_starts: th.Tensor | None = None

    def act(self, obs_tensor: th.Tensor | dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        starts = self.algorithm._last_episode_starts
        self.episode_starts = th.as_tensor(starts, dtype=th.float32, device=self.algorithm.device)
        actions, values, log_probs, self.lstm_states = self.policy(obs_tensor, self.lstm_states, self.episode_starts)  # type: ignore[arg-type]
        return actions, values, log_probs

    def step_locals(self) -> dict[str, Any]:
        return {"lstm_states": self.lstm_states, "episode_starts": self.episode_starts}

    def buffer_extras(self) -> dict[str, Any]:
        return {"lstm_states": self.algorithm._last_lstm_states}

    def advance(self) -> None:
        self.algorithm._last_lstm_states = self.lstm_states

    def bootstrap(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> np.ndarray:
        """
        :return: the rewards plus ``gamma`` times the critic's value of each truncated episode's last observation, from
            that env's own critic state (all truncated envs of the step in one forward pass)
        """
        values = np.zeros(len(dones), dtype=np.float32)
        truncated = truncations(dones, infos)
        if truncated:
            index = [idx for idx, _ in truncated]
            observations = self.policy.obs_to_tensor(stack_observations([terminal for _, terminal in truncated]))[0]
            rows = th.as_tensor(index, device=self.algorithm.device)
            critic_states = tuple(state[:, rows].contiguous() for state in self.lstm_states.vf)
            starts = th.zeros(len(index), dtype=th.float32, device=self.algorithm.device)
            with th.no_grad():
                terminal_values = self.policy.predict_values(observations, critic_states, starts)  # type: ignore[arg-type]
            values[index] = terminal_values.flatten().cpu().numpy()
        return rewards + self.algorithm.gamma * values

    def last_values(self, last_obs: Observation, dones: np.ndarray) -> th.Tensor:
        starts = th.as_tensor(dones, dtype=th.float32, device=self.algorithm.device)
        with th.no_grad():
            return self.policy.predict_values(obs_as_tensor(last_obs, self.algorithm.device), self.lstm_states.vf, starts)  # type: ignore[arg-type]


def _recurrent_docstring(summary: str, base: type) -> str:
    """The class docstring: ``summary``, then ``base``'s parameters with the recurrent policies named."""
    doc = inspect.getdoc(base) or ""
    params = doc[doc.index(":param policy:") :]
    first_line_end = params.index("\n")
    policy = (
        ":param policy: the recurrent policy (sb3-contrib's ``MlpLstmPolicy``, ``CnnLstmPolicy``, ``MultiInputLstmPolicy``)"
        " or a ``RecurrentActorCriticPolicy`` class; its keywords (``lstm_hidden_size``, ``n_lstm_layers``,"
        " ``shared_lstm``, ``enable_critic_lstm``, ``lstm_kwargs``) go in ``policy_kwargs``"
    )
    params = policy + params[first_line_end:]
    params = params.replace(
        ":param rollout_buffer_class: rollout buffer class (``None``: chosen from the observation space)",
        ":param rollout_buffer_class: rollout buffer class, a subclass of sb3-contrib's ``RecurrentRolloutBuffer`` or"
        " ``RecurrentDictRolloutBuffer`` (``None``: chosen from the observation space)",
    )
    return summary.strip() + "\n\n" + params


class RecurrentTRPO(RecurrentMixin, TRPO):
    __doc__ = _recurrent_docstring(
        """
TRPO with an LSTM policy (sb3-contrib's recurrent policies): ``RecurrentPPO``'s counterpart.

The surrogate, the mean KL, the Fisher-vector products and the line search are taken over the rollout's padded
sequences and their mask, each sequence started from the LSTM state stored at its first step; the critic is fitted on
sequences. ``predict(obs, state=..., episode_start=...)`` works as ``RecurrentPPO``'s. On cuda the Fisher-vector
product runs the LSTM without cuDNN, whose kernels cannot be differentiated twice.
""",
        TRPO,
    )


class RecurrentNaturalPG(RecurrentMixin, NaturalPG):
    __doc__ = _recurrent_docstring(
        """
Natural policy gradient with an LSTM policy (sb3-contrib's recurrent policies): the step of ``NaturalPG`` on the
padded sequences of ``RecurrentTRPO``.
""",
        NaturalPG,
    )
