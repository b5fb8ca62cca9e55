"""
Which implementation each part of the algorithm runs, decided in one place: :func:`choose_backends`.

A fast path runs only where it is provably the computation SB3 makes (:func:`is_stock_policy`): SB3's policy classes,
or subclasses that override none of the methods that compute actions, values and distributions, with SB3's
``MlpExtractor``, built only of the modules in :data:`VERIFIED_MODULES`, and holding no buffers (BatchNorm's running
statistics change on every forward). Every other policy runs SB3's own code: ``OnPolicyAlgorithm.collect_rollouts``
(so ``policy.forward`` is called as SB3 calls it), the Fisher by double back-propagation through
``policy.get_distribution``, and the critic fit with autograd on ``policy.predict_values``.

For a stock policy, every part has a generic path that works for any policy, and a fast path for the policies it
covers:

==================  ======================================  ==================================================
part                fast path                               generic path
==================  ======================================  ==================================================
rollouts            ``"fast"``: the policy frozen for the   ``"sb3"``: ``OnPolicyAlgorithm.collect_rollouts``
                    rollout, noise drawn up front
                    (:mod:`~sb3_trpo_ext.common.rollouts`)
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

Every Fisher path is the analytic Fisher; the choice is about speed, which ``benchmarks/fisher_paths.py`` measures
path against path (torch.func is the faster on a CNN actor, double back-propagation on a small MLP behind a Dict
extractor, the NumPy path on a plain MLP).

A *plain MLP* is what :func:`~sb3_trpo_ext.common.fast_mlp.mlp_layers` reads (``Linear`` layers and the activations
of :data:`~sb3_trpo_ext.common.fast_mlp.ACTIVATIONS` behind a ``FlattenExtractor``, or behind a ``CombinedExtractor``
that only flattens vectors: a concatenation, so a Dict of vectors runs the same path as the flat Box), in float32.
The NumPy paths live in :mod:`~sb3_trpo_ext.common.fast_mlp`, :mod:`~sb3_trpo_ext.common.critic` and
:mod:`~sb3_trpo_ext.common.fisher`. The algorithms store the decision in ``model.backends`` and print it at
``verbose >= 1``. ``model.backends`` is read by every part (rollouts, branches, Fisher, critic): a user may set it,
e.g. ``model.backends = model.backends._replace(fisher="double-backprop")``.
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
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn

from sb3_trpo_ext.common.fast_mlp import MlpPlan, mlp_plan
from sb3_trpo_ext.common.fisher import GAUSS_NEWTON_DISTRIBUTIONS, ActorOutput, FisherBackend
from sb3_trpo_ext.common.precision import Precision, PrecisionSetting, resolve_precision

RolloutsBackend = Literal["fast", "sb3"]
RolloutBackend = Literal["numpy-mlp", "torch"]
CriticFitBackend = Literal["numpy-adam", "torch"]


class Backends(NamedTuple):
    """
    The path each part runs (see the module's table).

    A tuple of strings, so that a saved model stores it as plain JSON (loading needs nothing from this package, e.g.
    in sb3-contrib); ``_setup_model`` decides again on load.
    """

    rollouts: RolloutsBackend
    rollout_actor: RolloutBackend
    rollout_critic: RolloutBackend
    critic_fit: CriticFitBackend
    fisher: FisherBackend
    precision: Precision = "float32"
    """The number format of the rollout's forwards, the critic fit and the Fisher products
    (:mod:`~sb3_trpo_ext.common.precision`); the rest of the step is float32 whatever it says."""

    def __str__(self) -> str:
        return (
            f"rollouts {self.rollouts}, rollout actor {self.rollout_actor}, rollout critic {self.rollout_critic}, "
            f"critic fit {self.critic_fit}, Fisher-vector product {self.fisher}, mixed precision {self.precision}"
        )


SB3_CODE = Backends(
    rollouts="sb3", rollout_actor="torch", rollout_critic="torch", critic_fit="torch", fisher="double-backprop"
)
"""What a policy that is not stock runs: SB3's own code for every part."""

VERIFIED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.Flatten, nn.Identity, nn.Tanh, nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.SiLU, nn.GELU,
    nn.Sequential, nn.ModuleList, nn.ModuleDict,  # as leaves: empty containers (e.g. net_arch=[])
)  # fmt: skip
"""The leaf modules a stock policy may be built of: stateless, deterministic (no dropout), no buffers."""

POLICY_METHODS = (
    "forward", "extract_features", "predict_values", "get_distribution", "evaluate_actions", "_predict",
    "_get_action_dist_from_latent",
)  # fmt: skip
"""The methods that compute actions, values and distributions: a subclass that overrides one is not stock."""


def is_stock_policy(policy: ActorCriticPolicy) -> bool:
    """
    Whether the fast paths provably compute what SB3 computes for ``policy``.

    :param policy: the policy
    :return: ``True`` for SB3's actor-critic policies (or subclasses that only change their construction) with SB3's
        ``MlpExtractor``, built of :data:`VERIFIED_MODULES` only, with no buffers
    """
    cls = type(policy)
    if any(getattr(cls, name) is not getattr(ActorCriticPolicy, name) for name in POLICY_METHODS):
        return False
    if type(policy.mlp_extractor) is not MlpExtractor or any(True for _ in policy.buffers()):
        return False
    leaves = [module for module in policy.modules() if next(module.children(), None) is None and module is not policy]
    return all(type(module) in VERIFIED_MODULES for module in leaves)


def choose_backends(policy: ActorCriticPolicy, precision: PrecisionSetting = "auto", plan: MlpPlan | None = None) -> Backends:
    """
    :param policy: the policy (with its optimizer)
    :param precision: the user's ``precision`` setting (:func:`~sb3_trpo_ext.common.precision.resolve_precision`)
    :param plan: the policy's :class:`~sb3_trpo_ext.common.fast_mlp.MlpPlan` (default: read off the policy)
    :return: the path each part runs (:data:`SB3_CODE` unless :func:`is_stock_policy`)
    """
    plan = plan if plan is not None else mlp_plan(policy)
    if not is_stock_policy(policy):
        return SB3_CODE._replace(precision=resolve_precision(precision, False, policy, policy.device))
    actor_mlp, critic_mlp = plan.actor is not None, plan.critic is not None
    on_cpu = policy.device.type == "cpu"
    dist = policy.action_dist
    closed_form_sampling = type(dist) is DiagGaussianDistribution or isinstance(
        dist, (CategoricalDistribution, MultiCategoricalDistribution, BernoulliDistribution)
    )
    gauss_newton = isinstance(dist, GAUSS_NEWTON_DISTRIBUTIONS) and not policy.use_sde
    fisher: FisherBackend = "double-backprop"
    if gauss_newton and actor_mlp and on_cpu:
        fisher = "numpy-gauss-newton"
    elif gauss_newton and _has_parameters(policy.pi_features_extractor) and _has_unique_parameter_names(ActorOutput(policy)):
        fisher = "gauss-newton"
    return Backends(
        rollouts="fast",
        rollout_actor="numpy-mlp" if actor_mlp and closed_form_sampling else "torch",
        rollout_critic="numpy-mlp" if critic_mlp else "torch",
        critic_fit="numpy-adam" if critic_mlp and on_cpu and _numpy_adam_reproduces(policy, plan) else "torch",
        fisher=fisher,
        precision=resolve_precision(precision, True, policy, policy.device),
    )


def _has_parameters(module: th.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _has_unique_parameter_names(module: th.nn.Module) -> bool:
    return len(list(module.named_parameters(remove_duplicate=False))) == len(list(module.parameters()))


def _numpy_adam_reproduces(policy: ActorCriticPolicy, plan: MlpPlan) -> bool:
    """The optimizer is a plain ``torch.optim.Adam`` over the critic (what :class:`~.critic.NumpyAdam` computes)."""
    optimizer = policy.optimizer
    if type(optimizer) is not th.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if any(group.get(option) for option in ("amsgrad", "weight_decay", "maximize", "decoupled_weight_decay")):
        return False
    layers = plan.critic or []
    in_group = {id(p) for p in group["params"]}
    return all(id(p) in in_group for linear, _ in layers for p in linear.parameters())
