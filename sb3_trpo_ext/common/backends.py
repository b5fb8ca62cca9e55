"""
Which implementation each part of the algorithm runs, decided in one place: :func:`choose_backends`.

Every part has a generic path that works for any policy, and a fast path for the policies it covers:

==================  ======================================  ==================================================
part                fast path                               generic path
==================  ======================================  ==================================================
rollout actor       ``"numpy-mlp"``: plain MLP, closed-     ``"torch"``: the policy's modules
                    form sampling (not gSDE)
rollout critic      ``"numpy-mlp"``: plain MLP              ``"torch"``: the policy's modules
critic fit          ``"numpy-adam"``: plain MLP critic,     ``"torch"``: autograd and the policy's optimizer
                    plain Adam, CPU
Fisher product      ``"numpy-gauss-newton"``: plain MLP     ``"double-backprop"``: gSDE, a policy that builds
                    actor on CPU; ``"gauss-newton"``        its distribution its own way, and small MLPs
                    (torch.func): an actor with a learned   behind a parameter-free extractor (Dict of
                    features extractor (CNN, Dict with      vectors, other activations, float64, GPU), where
                    images)                                 it is faster than torch.func
==================  ======================================  ==================================================

Every Fisher path is the analytic Fisher; the choice is about speed (figures in :mod:`sb3_trpo_ext.common.fisher`:
on a NatureCNN actor torch.func takes 26 s per 25-step CG solve where double back-propagation takes 42 s; on a
64x64 MLP behind a Dict extractor 83 ms where double back-propagation takes 55 ms).

A *plain MLP* is what :func:`~sb3_trpo_ext.common.fast_mlp.mlp_layers` reads (``Linear`` layers and the activations
of :data:`~sb3_trpo_ext.common.fast_mlp.ACTIVATIONS` behind a ``FlattenExtractor``), in float32. The NumPy paths
live in :mod:`~sb3_trpo_ext.common.fast_mlp`, :mod:`~sb3_trpo_ext.common.critic` and
:mod:`~sb3_trpo_ext.common.fisher`. The algorithms store the decision in ``model.backends`` and print it at
``verbose >= 1``.
"""

from typing import Literal, NamedTuple

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo_ext.common.fast_mlp import mlp_layers
from sb3_trpo_ext.common.fisher import GAUSS_NEWTON_DISTRIBUTIONS, ActorOutput, FisherBackend

RolloutBackend = Literal["numpy-mlp", "torch"]
CriticFitBackend = Literal["numpy-adam", "torch"]


class Backends(NamedTuple):
    """
    The path each part runs (see the module's table).

    A tuple of strings, so that a saved model stores it as plain JSON (loading needs nothing from this package, e.g.
    in sb3-contrib); ``_setup_model`` decides again on load.
    """

    rollout_actor: RolloutBackend
    rollout_critic: RolloutBackend
    critic_fit: CriticFitBackend
    fisher: FisherBackend

    def __str__(self) -> str:
        return (
            f"rollout actor {self.rollout_actor}, rollout critic {self.rollout_critic}, "
            f"critic fit {self.critic_fit}, Fisher-vector product {self.fisher}"
        )


def choose_backends(policy: ActorCriticPolicy) -> Backends:
    """
    :param policy: the policy (with its optimizer)
    :return: the path each part runs
    """
    actor_mlp = _is_float32(policy) and mlp_layers(policy, "actor") is not None
    critic_mlp = _is_float32(policy) and mlp_layers(policy, "critic") is not None
    on_cpu = policy.device.type == "cpu"
    dist = policy.action_dist
    closed_form_sampling = type(dist) is DiagGaussianDistribution or isinstance(
        dist, (CategoricalDistribution, MultiCategoricalDistribution, BernoulliDistribution)
    )
    gauss_newton = (
        isinstance(dist, GAUSS_NEWTON_DISTRIBUTIONS) and not policy.use_sde and _builds_standard_distribution(policy)
    )
    fisher: FisherBackend = "double-backprop"
    if gauss_newton and actor_mlp and on_cpu:
        fisher = "numpy-gauss-newton"
    elif gauss_newton and _has_parameters(policy.pi_features_extractor) and _has_unique_parameter_names(ActorOutput(policy)):
        fisher = "gauss-newton"
    return Backends(
        rollout_actor="numpy-mlp" if actor_mlp and closed_form_sampling else "torch",
        rollout_critic="numpy-mlp" if critic_mlp else "torch",
        critic_fit="numpy-adam" if critic_mlp and on_cpu and _numpy_adam_reproduces(policy) else "torch",
        fisher=fisher,
    )


def _is_float32(policy: ActorCriticPolicy) -> bool:
    return all(p.dtype == th.float32 for p in policy.parameters())


def _builds_standard_distribution(policy: ActorCriticPolicy) -> bool:
    """The distribution is SB3's: action head output -> distribution (what the Gauss-Newton form differentiates)."""
    cls = type(policy)
    return (
        cls.get_distribution is ActorCriticPolicy.get_distribution
        and cls._get_action_dist_from_latent is ActorCriticPolicy._get_action_dist_from_latent
    )


def _has_parameters(module: th.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _has_unique_parameter_names(module: th.nn.Module) -> bool:
    return len(list(module.named_parameters(remove_duplicate=False))) == len(list(module.parameters()))


def _numpy_adam_reproduces(policy: ActorCriticPolicy) -> bool:
    """The optimizer is a plain ``torch.optim.Adam`` over the critic (what :class:`~.critic.NumpyAdam` computes)."""
    optimizer = policy.optimizer
    if type(optimizer) is not th.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if any(group.get(option) for option in ("amsgrad", "weight_decay", "maximize", "decoupled_weight_decay")):
        return False
    layers = mlp_layers(policy, "critic") or []
    in_group = {id(p) for p in group["params"]}
    return all(id(p) in in_group for linear, _ in layers for p in linear.parameters())
