"""
KL divergences between whole action distributions, for every SB3 distribution type.

The paper's trust region bounds the mean over states of ``KL(pi_old(.|s) || pi_new(.|s))`` where each KL is taken
between the *whole* action distributions. For factorised distributions (diagonal Gaussian, gSDE, Bernoulli,
MultiCategorical) that is the **sum** over action components. (sb3-contrib's TRPO averages over action dimensions
instead, which makes its trust region ``action_dim`` times looser for Gaussian policies.)
"""

import copy

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from torch.distributions import Bernoulli, Categorical, Normal

SUPPORTED_DISTRIBUTIONS = (
    DiagGaussianDistribution,  # includes SquashedDiagGaussianDistribution
    StateDependentNoiseDistribution,
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
)


def _detach_torch_distribution(dist: th.distributions.Distribution) -> th.distributions.Distribution:
    if isinstance(dist, Normal):
        return Normal(dist.loc.detach(), dist.scale.detach(), validate_args=False)
    if isinstance(dist, Categorical):
        # Keep the (already normalized) logits exactly: normalizing them again would change them by rounding, and
        # KL(old || new) at identical parameters would not be exactly 0.
        logits = dist.logits.detach()
        detached = Categorical(logits=logits, validate_args=False)
        detached.logits = detached._param = logits
        detached.__dict__.pop("probs", None)
        return detached
    if isinstance(dist, Bernoulli):
        return Bernoulli(logits=dist.logits.detach(), validate_args=False)
    raise TypeError(f"Unsupported torch distribution {type(dist).__name__}")


def detach_distribution(distribution: Distribution) -> Distribution:
    """
    A copy of an SB3 distribution whose parameters are cut from the autograd graph (the "old" policy).

    :param distribution: an SB3 distribution after ``proba_distribution``
    :return: a shallow copy holding detached torch distributions
    """
    detached = copy.copy(distribution)
    if isinstance(distribution.distribution, list):
        detached.distribution = [_detach_torch_distribution(d) for d in distribution.distribution]
    else:
        detached.distribution = _detach_torch_distribution(distribution.distribution)
    return detached


def _kl(p: th.distributions.Distribution, q: th.distributions.Distribution) -> th.Tensor:
    kl = th.distributions.kl_divergence(p, q)
    return kl.sum(dim=-1) if kl.dim() > 1 else kl


def kl_per_state(old: Distribution, new: Distribution) -> th.Tensor:
    """
    ``KL(old(.|s) || new(.|s))`` between whole action distributions, one value per state.

    :param old: the old policy's distribution on a batch of states
    :param new: the new policy's distribution on the same states
    :return: a tensor of shape ``(batch,)``
    """
    if type(old) is not type(new):
        raise TypeError(f"KL between different distribution types: {type(old).__name__} and {type(new).__name__}")
    if isinstance(old.distribution, list) and isinstance(new.distribution, list):
        return th.stack([_kl(p, q) for p, q in zip(old.distribution, new.distribution, strict=True)], dim=1).sum(dim=1)
    return _kl(old.distribution, new.distribution)  # type: ignore[arg-type]


def actor_parameters(policy: th.nn.Module, distribution: Distribution) -> list[th.nn.Parameter]:
    """
    The parameters the action distribution depends on (the actor's), found through autograd.

    :param policy: the policy
    :param distribution: its distribution on some batch (built with gradients)
    :return: the parameters with a gradient path to the distribution's tensors
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    dists = distribution.distribution if isinstance(distribution.distribution, list) else [distribution.distribution]
    tensors: list[th.Tensor] = []
    for dist in dists:
        tensors += [dist.loc, dist.scale] if isinstance(dist, th.distributions.Normal) else [dist.logits]  # type: ignore[attr-defined]
    probe = th.stack([t.sum() for t in tensors]).sum()
    grads = th.autograd.grad(probe, params, retain_graph=True, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]
