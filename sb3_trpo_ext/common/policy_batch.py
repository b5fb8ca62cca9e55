"""
The samples of one policy step and the surrogate objective estimated on them.

:class:`AdvantageBatch` is single-path TRPO's (and NPG's): the importance-weighted advantages of the rollout. The
vine method's batch (:class:`sb3_trpo_ext.vine.rollout_set.VineBatch`) holds Q-values of K actions per state instead.
The trust-region step only needs what :class:`PolicyBatch` declares.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs


class PolicyBatch:
    """
    What the trust-region step needs: states, actions, and the surrogate ``L(theta)`` estimated on them.

    The step reads the policy only through the batch (:meth:`distribution`, :meth:`state_mean`, :meth:`states`), so
    that a batch whose policy needs more than observations (action masks, recurrent states over padded sequences)
    brings it along; the defaults are plain feed-forward policies on a flat batch of states.
    """

    observations: PyTorchObs
    actions: th.Tensor

    def distribution(self, policy: ActorCriticPolicy) -> Distribution:
        """
        :param policy: the policy, at whatever parameters it holds
        :return: its action distribution on the batch's states
        """
        return policy.get_distribution(self.observations)

    def state_mean(self, per_state: th.Tensor) -> th.Tensor:
        """
        :param per_state: one value per state of the batch (the KL of each state)
        :return: their mean over the batch's states (a recurrent batch leaves its padding out)
        """
        return per_state.mean()

    def states(self, index: th.Tensor) -> "PolicyBatch":
        """
        :param index: the states to keep (the Fisher's random subsample)
        :return: a batch of those states and their actions, whose :meth:`distribution` and :meth:`state_mean` the
            Fisher-vector product uses (its surrogate is not defined)
        """
        return StateBatch(index_observations(self.observations, index), self.actions[index])

    def surrogate(self, log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
        """
        :param log_prob: log-probabilities of the batch's actions under the current parameters
        :param old_log_prob: the same under the old parameters (detached)
        :return: the surrogate objective, a scalar to maximize
        """
        raise NotImplementedError

    def is_finite(self) -> bool:
        """:return: whether the estimates the surrogate weighs the actions with are all finite"""
        raise NotImplementedError

    def chunks(self, size: int) -> "list[tuple[PolicyBatch, float]] | None":
        """
        :param size: the most states a piece holds
        :return: the batch in consecutive pieces, each with its weight, such that the weighted sum of the pieces'
            surrogates (and of their :meth:`state_mean`) is the batch's; ``None`` where the batch does not split so
            (the default: a vine or recurrent batch is evaluated whole)
        """
        return None


@dataclass
class AdvantageBatch(PolicyBatch):
    """
    Single path: ``L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A(s, a))``.

    :param observations: the states
    :param actions: the actions taken there
    :param advantages: their advantage estimates
    """

    observations: PyTorchObs
    actions: th.Tensor
    advantages: th.Tensor

    @classmethod
    def from_rollout(
        cls,
        observations: PyTorchObs,
        actions: th.Tensor,
        advantages: th.Tensor,
        sub_sampling_factor: int = 1,
        normalize_advantage: bool = True,
    ) -> "AdvantageBatch":
        """
        :param observations: all observations of the rollout
        :param actions: all actions of the rollout
        :param advantages: all advantages of the rollout
        :param sub_sampling_factor: keep every k-th sample (as sb3-contrib)
        :param normalize_advantage: standardize the advantages of the kept samples
        :return: the batch
        """
        if sub_sampling_factor > 1:
            observations = index_observations(observations, slice(None, None, sub_sampling_factor))
            actions, advantages = actions[::sub_sampling_factor], advantages[::sub_sampling_factor]
        if normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return cls(observations, actions, advantages)

    def surrogate(self, log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
        return (th.exp(log_prob - old_log_prob) * self.advantages).mean()

    def is_finite(self) -> bool:
        return bool(th.isfinite(self.advantages).all())

    def chunks(self, size: int) -> list[tuple[PolicyBatch, float]]:
        """Pieces of the same class, every field (one row per state) cut alike, weighted by their share of states:
        the surrogate and the state mean are means over states."""
        n_states = len(self.actions)
        pieces: list[tuple[PolicyBatch, float]] = []
        for start in range(0, n_states, size):
            rows = slice(start, min(start + size, n_states))
            fields = {field.name: index_observations(getattr(self, field.name), rows) for field in dataclasses.fields(self)}
            pieces.append((dataclasses.replace(self, **fields), (rows.stop - rows.start) / n_states))  # type: ignore[arg-type]
        return pieces


@dataclass
class StateBatch(PolicyBatch):
    """
    States and actions without a surrogate: what the Fisher of a feed-forward policy is averaged over.

    :param observations: the states
    :param actions: the actions taken there
    """

    observations: PyTorchObs
    actions: th.Tensor


def index_observations(observations: PyTorchObs, index: th.Tensor | np.ndarray | slice) -> PyTorchObs:
    """
    :param observations: a batch of observations (tensor or dict of tensors)
    :param index: indices or a slice along the batch dimension
    :return: the selected observations
    """
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


def repeat_observations(observations: Any, times: int) -> Any:
    """
    :param observations: a batch of observations: an array or tensor, or a dict of them
    :param times: how often each row is repeated
    :return: each row ``times`` times in a row (``[a, a, b, b]``), of the same kind
    """

    def repeat(rows: Any) -> Any:
        return rows.repeat_interleave(times, dim=0) if isinstance(rows, th.Tensor) else np.repeat(rows, times, axis=0)

    if isinstance(observations, dict):
        return {key: repeat(value) for key, value in observations.items()}
    return repeat(observations)
