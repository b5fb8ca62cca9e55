"""
The vine method's surrogate estimators (paper, Section 5.2), as pure functions on ``(N states, K actions)`` tensors.

- Eq. (15), small discrete action spaces, every action rolled out: ``L_n = sum_k pi_theta(a_k|s_n) Q(s_n, a_k)``.
- Eq. (16), any action space, self-normalized importance sampling:
  ``L_n = sum_k w_k Q(s_n, a_{n,k}) / sum_k w_k`` with ``w_k = pi_theta(a_{n,k}|s_n) / q(a_{n,k}|s_n)``.
  No baseline is needed: adding a constant to every ``Q(s_n, .)`` adds the same constant to ``L_n``.

The surrogate is the mean of ``L_n`` over the rollout set. :class:`VineBatch` is what a vine iteration hands to the
trust-region step.
"""

from dataclasses import dataclass

import torch as th
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_trpo_ext.common.policy_batch import PolicyBatch


def all_actions_surrogate(log_prob: th.Tensor, q_values: th.Tensor) -> th.Tensor:
    """
    Eq. (15): ``mean_n sum_k pi_theta(a_k | s_n) Q(s_n, a_k)``, when the K actions are all the actions.

    :param log_prob: ``log pi_theta(a_k | s_n)``, shape ``(N, K)``
    :param q_values: ``Q(s_n, a_k)``, shape ``(N, K)``
    :return: the surrogate (scalar)
    """
    return (th.exp(log_prob) * q_values).sum(dim=1).mean()


def importance_sampling_surrogate(log_prob: th.Tensor, log_q: th.Tensor, q_values: th.Tensor) -> th.Tensor:
    """
    Eq. (16): ``mean_n [sum_k w_k Q(s_n, a_{n,k})] / [sum_k w_k]``, ``w_k = pi_theta(a_{n,k}|s_n) / q(a_{n,k}|s_n)``.

    Computed in log space for stability: the weights are a softmax over ``k`` of ``log pi_theta - log q``.

    :param log_prob: ``log pi_theta(a_{n,k} | s_n)``, shape ``(N, K)``
    :param log_q: ``log q(a_{n,k} | s_n)`` of the sampling distribution, shape ``(N, K)``
    :param q_values: ``Q(s_n, a_{n,k})``, shape ``(N, K)``
    :return: the surrogate (scalar)
    """
    weights = th.softmax(log_prob - log_q, dim=1)
    return (weights * q_values).sum(dim=1).mean()


@dataclass
class VineBatch(PolicyBatch):
    """
    One vine iteration's samples: N rollout-set states, K actions at each, their Q estimates and ``log q``.

    :param observations: the states, each repeated K times (state-major), ``(N * K, *obs_shape)``
    :param actions: the actions, ``(N * K, ...)`` as the distributions' ``log_prob`` takes them
    :param q_values: ``Q(s_n, a_{n,k})``, ``(N, K)``
    :param log_q: ``log q(a_{n,k} | s_n)`` of the distribution the actions were drawn from, ``(N, K)``
    :param all_actions: the K actions are all the actions of a Discrete space (Eq. 15), else Eq. (16)
    """

    observations: PyTorchObs
    actions: th.Tensor
    q_values: th.Tensor
    log_q: th.Tensor
    all_actions: bool

    def surrogate(self, log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
        """Eq. (15) or Eq. (16) (the old log-probabilities are not needed: ``q`` is the sampling density)."""
        log_prob = log_prob.reshape(self.q_values.shape)
        if self.all_actions:
            return all_actions_surrogate(log_prob, self.q_values)
        return importance_sampling_surrogate(log_prob, self.log_q, self.q_values)

    def is_finite(self) -> bool:
        return bool(th.isfinite(self.q_values).all())
