"""
The policy batch of a recurrent policy: padded sequences, each started from the LSTM state stored at its first step.

sb3-contrib's recurrent rollout buffer cuts the rollout into sequences at every episode start and at every change of
environment, pads them to one length and flattens them to ``(n_seq * max_len, ...)`` rows in sequence order. A
:class:`SequenceBatch` keeps that layout and its mask, so that the trust-region step
(:func:`~sb3_trpo_ext.common.natural_gradient.natural_direction`) sees exactly what it sees on a flat batch:

- :meth:`SequenceBatch.distribution`: the policy run over the sequences from their stored start states, resetting the
  state at each episode start inside a sequence;
- :meth:`SequenceBatch.surrogate` and :meth:`SequenceBatch.state_mean`: means over the real steps only (the padding,
  ``mask == 0``, weighs nothing), so the surrogate, the mean KL, its Hessian (the Fisher) and the line search's KL are
  those of the unpadded rollout;
- :meth:`SequenceBatch.states`: the Fisher's random subsample takes whole sequences, never frames out of one.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch as th
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_trpo_ext.common.policy_batch import PolicyBatch


@contextlib.contextmanager
def differentiable_rnn(device: th.device) -> Iterator[None]:
    """
    Run the LSTM without cuDNN while autograd records (on cuda): cuDNN's RNN kernels have no double backward
    (PyTorch issue 5261), and the Fisher-vector product differentiates the mean KL twice. The other cuDNN settings are
    kept as they are; on the CPU, and under ``no_grad`` (the line search), nothing changes.

    :param device: the policy's device
    """
    if device.type != "cuda" or not th.is_grad_enabled():
        yield
        return
    cudnn = th.backends.cudnn
    with cudnn.flags(enabled=False, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=cudnn.allow_tf32):
        yield


def starts_folded(
    lstm_states: tuple[th.Tensor, th.Tensor], episode_starts: th.Tensor
) -> tuple[tuple[th.Tensor, th.Tensor], th.Tensor]:
    """
    The same LSTM pass in one call where episodes start only at the sequences' first steps (always so in a recurrent
    buffer's samples: it cuts a sequence at each episode start): the reset is applied to the start states, and the
    policy, seeing no episode start, runs the LSTM over whole sequences at once instead of one step at a time.

    :param lstm_states: ``(hidden, cell)`` at each sequence's start, ``(n_layers, n_seq, hidden_size)``
    :param episode_starts: ``(n_seq * max_len,)``
    :return: the states and episode starts to run the policy with (unchanged where an episode starts mid-sequence)
    """
    per_sequence = _per_sequence(episode_starts, lstm_states[0].shape[1])
    if bool((per_sequence[:, 1:] != 0).any()):
        return lstm_states, episode_starts
    keep = (1.0 - per_sequence[:, 0]).view(1, -1, 1)
    return (lstm_states[0] * keep, lstm_states[1] * keep), th.zeros_like(episode_starts)


def _per_sequence(values: th.Tensor, n_sequences: int) -> th.Tensor:
    """``(n_seq * max_len, ...)`` rows -> ``(n_seq, max_len, ...)``."""
    return values.reshape(n_sequences, -1, *values.shape[1:])


@dataclass
class SequenceBatch(PolicyBatch):
    """
    Padded sequences and ``L(theta) = sum(mask * pi_theta(a|s) / pi_old(a|s) * A) / sum(mask)``.

    :param observations: ``(n_seq * max_len, ...)``, the sequences one after the other, each padded to ``max_len``
    :param actions: the actions, in the same rows
    :param advantages: their advantage estimates (0 on padding)
    :param lstm_states: the actor's LSTM ``(hidden, cell)`` state at each sequence's first step,
        ``(n_layers, n_seq, hidden_size)`` each
    :param episode_starts: 1.0 where an episode starts (the LSTM state is reset there)
    :param mask: 1.0 on real steps, 0.0 on padding
    """

    observations: PyTorchObs
    actions: th.Tensor
    advantages: th.Tensor
    lstm_states: tuple[th.Tensor, th.Tensor]
    episode_starts: th.Tensor
    mask: th.Tensor

    @classmethod
    def from_rollout(
        cls,
        observations: PyTorchObs,
        actions: th.Tensor,
        advantages: th.Tensor,
        lstm_states: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
        mask: th.Tensor,
        sub_sampling_factor: int = 1,
        normalize_advantage: bool = True,
    ) -> "SequenceBatch":
        """
        :param observations: the rollout's padded sequences (the recurrent buffer's samples)
        :param actions: their actions
        :param advantages: their advantages
        :param lstm_states: the actor's LSTM state at each sequence's start
        :param episode_starts: the episode starts
        :param mask: 1.0 on real steps
        :param sub_sampling_factor: keep every k-th *sequence* (frames cannot be dropped from inside a sequence)
        :param normalize_advantage: standardize the advantages over the real steps of the kept sequences
        :return: the batch
        """
        batch = cls(observations, actions, advantages, lstm_states, episode_starts, mask.float())
        if sub_sampling_factor > 1:
            batch = batch.sequences(th.arange(0, batch.n_sequences, sub_sampling_factor, device=mask.device))
        real = batch.mask > 0
        if normalize_advantage and int(real.sum()) > 1:
            kept = batch.advantages[real]
            normalized = (batch.advantages - kept.mean()) / (kept.std() + 1e-8)
            batch.advantages = th.where(real, normalized, th.zeros_like(normalized))
        return batch

    @property
    def n_sequences(self) -> int:
        """The number of sequences."""
        return self.lstm_states[0].shape[1]

    def distribution(self, policy: ActorCriticPolicy) -> Distribution:
        with differentiable_rnn(policy.device):
            recurrent = cast(RecurrentActorCriticPolicy, policy)
            states, starts = starts_folded(self.lstm_states, self.episode_starts)
            distribution, _ = recurrent.get_distribution(self.observations, states, starts)  # type: ignore[arg-type]
        return distribution

    def state_mean(self, per_state: th.Tensor) -> th.Tensor:
        # where, not a product: a non-finite value on padding (a ratio tried by the line search) must weigh nothing
        return th.where(self.mask > 0, per_state, th.zeros_like(per_state)).sum() / self.mask.sum()

    def states(self, index: th.Tensor) -> "SequenceBatch":
        """
        :param index: random rows (the Fisher's subsample, of the size the fraction asks for)
        :return: the whole sequences of those rows, as many sequences as the rows would fill, in the order the rows
            first name them
        """
        max_len = len(self.actions) // self.n_sequences
        n_keep = max(1, round(len(index) / max_len))
        named = (index // max_len).tolist()
        chosen = list(dict.fromkeys(named))[:n_keep]
        return self.sequences(th.as_tensor(chosen, dtype=th.long, device=self.mask.device))

    def sequences(self, chosen: th.Tensor) -> "SequenceBatch":
        """
        :param chosen: indices of sequences
        :return: the batch of those sequences (with their padding)
        """
        n = self.n_sequences

        def rows(values: th.Tensor) -> th.Tensor:
            picked = _per_sequence(values, n)[chosen]
            return picked.reshape(-1, *values.shape[1:])

        observations = (
            {key: rows(value) for key, value in self.observations.items()}
            if isinstance(self.observations, dict)
            else rows(self.observations)
        )
        hidden, cell = self.lstm_states
        return SequenceBatch(
            observations,
            rows(self.actions),
            rows(self.advantages),
            (hidden[:, chosen].contiguous(), cell[:, chosen].contiguous()),
            rows(self.episode_starts),
            rows(self.mask),
        )

    def surrogate(self, log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
        return self.state_mean(th.exp(log_prob - old_log_prob) * self.advantages)

    def is_finite(self) -> bool:
        return bool(th.isfinite(self.advantages).all())
