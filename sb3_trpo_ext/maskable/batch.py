"""
The policy batch of a masked update: the rollout's advantages and, for every state, the action mask it had.

The step reads the policy only through its batch (:class:`~sb3_trpo_ext.common.policy_batch.PolicyBatch`), so the
masks live here: :meth:`MaskedAdvantageBatch.distribution` builds the policy's distribution with each state's mask,
and :meth:`MaskedAdvantageBatch.states` (the Fisher's random subsample) keeps the masks of the kept states.

sb3-contrib's maskable distributions set a masked logit to ``-1e8``: after normalization its probability is
``exp(-1e8 - logsumexp) = 0`` exactly (in float32 and float64), it receives no gradient (``th.where``), and torch's
categorical KL zeroes the terms where the old probability is zero, so ``KL(old || new)`` between two distributions
with the same mask is the KL over the valid actions only: finite and exact, and so is its Hessian (the Fisher). The
distribution is handed to the step as SB3's own ``CategoricalDistribution`` / ``MultiCategoricalDistribution``
holding the masked torch categoricals, which the engine's KL, detach and actor-parameter functions read unchanged.
"""

from dataclasses import dataclass

import torch as th
from sb3_contrib.common.maskable.distributions import (
    MaskableCategoricalDistribution,
    MaskableDistribution,
    MaskableMultiCategoricalDistribution,
)
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution, MultiCategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_trpo_ext.common.policy_batch import AdvantageBatch, PolicyBatch, StateBatch, index_observations


def as_engine_distribution(distribution: MaskableDistribution) -> Distribution:
    """
    :param distribution: a maskable distribution of sb3-contrib, masks applied
    :return: the same torch categoricals in SB3's distribution class of that kind (Discrete: ``CategoricalDistribution``;
        MultiDiscrete and MultiBinary: ``MultiCategoricalDistribution``, a MultiBinary dimension being a categorical
        over {0, 1} as sb3-contrib makes it)
    """
    if isinstance(distribution, MaskableCategoricalDistribution):
        single = CategoricalDistribution(distribution.action_dim)
        single.distribution = distribution.distribution
        return single
    if isinstance(distribution, MaskableMultiCategoricalDistribution):
        multi = MultiCategoricalDistribution(list(distribution.action_dims))
        multi.distribution = list(distribution.distributions)
        return multi
    raise TypeError(f"Unsupported maskable distribution {type(distribution).__name__}")


def masked_distribution(policy: ActorCriticPolicy, observations: PyTorchObs, action_masks: th.Tensor) -> Distribution:
    """
    :param policy: a maskable policy (sb3-contrib's ``MaskableActorCriticPolicy`` or a subclass)
    :param observations: a batch of states
    :param action_masks: their masks, ``(batch, sum of the action dimensions' sizes)``, True where valid
    :return: the policy's masked distribution on them, as the engine reads distributions
    """
    maskable = policy.get_distribution(observations, action_masks=action_masks)  # type: ignore[call-arg]
    return as_engine_distribution(maskable)  # type: ignore[arg-type]


@dataclass
class MaskedAdvantageBatch(AdvantageBatch):
    """
    Single path with masks: ``L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A(s, a))`` with each ``pi`` masked by the
    mask state ``s`` had in the rollout.

    :param observations: the states
    :param actions: the actions taken there
    :param advantages: their advantage estimates
    :param action_masks: the mask of each state (True where valid)
    """

    action_masks: th.Tensor

    def distribution(self, policy: ActorCriticPolicy) -> Distribution:
        return masked_distribution(policy, self.observations, self.action_masks)

    def states(self, index: th.Tensor) -> PolicyBatch:
        return MaskedStateBatch(index_observations(self.observations, index), self.actions[index], self.action_masks[index])


@dataclass
class MaskedStateBatch(StateBatch):
    """
    States, actions and masks without a surrogate: what the Fisher of a masked policy is averaged over.

    :param observations: the states
    :param actions: the actions taken there
    :param action_masks: the mask of each state
    """

    action_masks: th.Tensor

    def distribution(self, policy: ActorCriticPolicy) -> Distribution:
        return masked_distribution(policy, self.observations, self.action_masks)


def masked_batch(
    observations: PyTorchObs,
    actions: th.Tensor,
    advantages: th.Tensor,
    action_masks: th.Tensor,
    sub_sampling_factor: int = 1,
    normalize_advantage: bool = True,
) -> MaskedAdvantageBatch:
    """
    :param observations: all observations of the rollout
    :param actions: all actions of the rollout
    :param advantages: all advantages of the rollout
    :param action_masks: all masks of the rollout (any dtype; nonzero where valid)
    :param sub_sampling_factor: keep every k-th sample (as sb3-contrib's TRPO)
    :param normalize_advantage: standardize the advantages of the kept samples
    :return: the batch, each kept state with its own mask
    """
    plain = AdvantageBatch.from_rollout(observations, actions, advantages, sub_sampling_factor, normalize_advantage)
    masks = action_masks[::sub_sampling_factor].bool()
    return MaskedAdvantageBatch(plain.observations, plain.actions, plain.advantages, masks)
