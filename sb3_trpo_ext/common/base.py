"""
``NaturalGradientAlgorithm``: the base class of the TRPO family.

It owns the shared ``train()`` skeleton: build the batch, estimate the surrogate objective and its gradient,
solve ``F s = g`` with conjugate gradient on the analytic Fisher, take a step with the subclass's step rule,
fit the critic, log. Subclasses differ only where the methods differ:

- :meth:`NaturalGradientAlgorithm._apply_step`: the step rule (line search for TRPO, a fixed step for NPG);
- :meth:`NaturalGradientAlgorithm._surrogate_objective` and :meth:`NaturalGradientAlgorithm._policy_batch`:
  how the surrogate is estimated (importance-weighted advantages here; the vine's Q-value estimators);
- ``collect_rollouts``: how samples are gathered.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution, StateDependentNoiseDistribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv
from threadpoolctl import threadpool_limits
from torch.nn import functional as F

from sb3_trpo_ext.common.distributions import SUPPORTED_DISTRIBUTIONS, detach_distribution, kl_per_state
from sb3_trpo_ext.common.fast_mlp import NumpyAdamFit, mlp_layers, mse_gradients
from sb3_trpo_ext.common.gauss_newton import gauss_newton_fisher_vector_product_fn
from sb3_trpo_ext.common.natural_gradient import (
    conjugate_gradient,
    fisher_vector_product_fn,
    flat_grad,
    full_step_scale,
)
from sb3_trpo_ext.common.rollouts import collect_rollouts_fast
from sb3_trpo_ext.common.validation import (
    check_action_space,
    check_batch_size,
    check_in_range,
    check_int_at_least,
    check_positive,
)

SelfNaturalGradientAlgorithm = TypeVar("SelfNaturalGradientAlgorithm", bound="NaturalGradientAlgorithm")


class PolicyBatch(NamedTuple):
    """The samples the surrogate objective and the trust region are computed on."""

    observations: PyTorchObs
    actions: th.Tensor
    weights: th.Tensor
    """Per-sample weights of the likelihood ratio: advantages for single path, Q-values for the vine."""


@dataclass
class StepOutcome:
    """What a step rule did."""

    accepted: bool
    objective: float
    kl: float
    step_size: float
    line_search_iterations: int = 0
    non_finite: bool = False
    """The step gave a non-finite result and was undone (counted as a skipped update)."""
    extra: dict[str, float] = field(default_factory=dict)


def index_observations(observations: PyTorchObs, index: th.Tensor | np.ndarray | slice) -> PyTorchObs:
    """
    :param observations: a batch of observations (tensor or dict of tensors)
    :param index: indices or a slice along the batch dimension
    :return: the selected observations
    """
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


class NaturalGradientAlgorithm(OnPolicyAlgorithm):
    """
    Base class of natural-gradient policy optimization (TRPO, natural policy gradient, vine TRPO).

    :param policy: the policy model (``MlpPolicy``, ``CnnPolicy``, ``MultiInputPolicy``) or a policy class
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate of the critic's Adam optimizer (constant or schedule)
    :param n_steps: steps to run per environment per update
    :param batch_size: mini-batch size of the critic's updates
    :param gamma: discount factor
    :param cg_max_steps: conjugate-gradient iterations ``k`` (the paper uses 10)
    :param cg_damping: damping added to the Fisher-vector product
    :param n_critic_updates: epochs of critic (value function) updates per rollout
    :param gae_lambda: GAE trade-off of bias and variance
    :param use_sde: use generalized State Dependent Exploration
    :param sde_sample_freq: resample the gSDE noise every n steps (-1: only at the start of a rollout)
    :param rollout_buffer_class: rollout buffer class (``None``: chosen from the observation space)
    :param rollout_buffer_kwargs: keyword arguments of the rollout buffer
    :param normalize_advantage: normalize the advantages
    :param target_kl: the trust-region size ``delta``: bound on the mean over states of the KL divergence between the
        whole old and new action distributions (sb3-contrib averages the Gaussian KL over action dimensions instead:
        its ``target_kl`` corresponds to ours divided by the action dimension)
    :param sub_sampling_factor: use only every k-th sample of the rollout for the policy step (as in sb3-contrib)
    :param fisher_sample_fraction: fraction of the policy batch used for the Fisher-vector products (the paper uses 0.1)
    :param stats_window_size: window size of the rollout logging (episodes)
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments passed to the policy on creation
    :param verbose: 0 no output, 1 info, 2 debug
    :param seed: seed of the pseudo random generators
    :param device: device to run on (cpu, cuda, auto)
    :param _init_setup_model: whether to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        cg_max_steps: int = 10,
        cg_damping: float = 0.1,
        n_critic_updates: int = 10,
        gae_lambda: float = 0.95,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = True,
        target_kl: float = 0.01,
        sub_sampling_factor: int = 1,
        fisher_sample_fraction: float = 1.0,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        name = type(self).__name__
        check_positive("target_kl", target_kl, " The paper's trust region is target_kl=0.01.")
        check_int_at_least("cg_max_steps", cg_max_steps, 1, " The paper uses 10 conjugate-gradient steps.")
        check_in_range("cg_damping", cg_damping, 0.0, float("inf"), True, False, " Typical values: 0.1 or 1e-3.")
        check_int_at_least("n_steps", n_steps, 1)
        check_int_at_least("batch_size", batch_size, 1)
        check_int_at_least("n_critic_updates", n_critic_updates, 0)
        check_int_at_least("sub_sampling_factor", sub_sampling_factor, 1, " 1 uses every sample.")
        check_in_range("fisher_sample_fraction", fisher_sample_fraction, 0.0, 1.0, False, True, " The paper uses 0.1.")
        check_in_range("gamma", gamma, 0.0, 1.0, True, True)
        check_in_range("gae_lambda", gae_lambda, 0.0, 1.0, True, True)
        if isinstance(learning_rate, (int, float)):
            check_positive("learning_rate", learning_rate)
        if env is not None and not isinstance(env, str):
            check_action_space(env.action_space, name)

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,
            vf_coef=0.0,
            max_grad_norm=0.0,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=None,
        )
        if getattr(self, "action_space", None) is not None:
            check_action_space(self.action_space, name)
        if self.env is not None:
            check_batch_size(batch_size, n_steps, self.n_envs)

        self.batch_size = batch_size
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.n_critic_updates = n_critic_updates
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.sub_sampling_factor = sub_sampling_factor
        self.fisher_sample_fraction = fisher_sample_fraction
        self.skipped_updates = 0

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, ActorCriticPolicy):
            raise TypeError(f"{type(self).__name__} needs an ActorCriticPolicy, got {type(self.policy).__name__}")
        if not isinstance(self.policy.action_dist, SUPPORTED_DISTRIBUTIONS):
            raise ValueError(f"Unsupported action distribution {type(self.policy.action_dist).__name__}")
        self._actor_params: list[th.nn.Parameter] | None = None
        self._use_fused_adam()

    def _use_fused_adam(self) -> None:
        """
        Switch the critic's Adam to its fused kernel (same update, a fraction of the per-step overhead on small nets).

        Only for a plain ``th.optim.Adam`` on CPU/CUDA that has not stepped yet; the flag travels in the optimizer's
        state dict, which SB3 and sb3-contrib load unchanged.
        """
        optimizer = self.policy.optimizer
        if type(optimizer) is not th.optim.Adam or optimizer.state or self.device.type not in ("cpu", "cuda"):
            return
        for group in optimizer.param_groups:
            if not group.get("foreach") and not group.get("differentiable") and not group.get("capturable"):
                group["fused"] = True

    # ------------------------------------------------------------------ rollouts

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect ``n_rollout_steps`` steps per environment with the current policy (fast path, same behaviour as SB3).

        :param env: the training environment
        :param callback: callback called at each step
        :param rollout_buffer: buffer to fill with rollouts
        :param n_rollout_steps: number of experiences to collect per environment
        :return: True if collection finished, False if a callback stopped it
        """
        return collect_rollouts_fast(self, env, callback, rollout_buffer, n_rollout_steps)

    # ------------------------------------------------------------------ hooks for subclasses

    def _policy_batch(self, observations: PyTorchObs, actions: th.Tensor, advantages: th.Tensor) -> PolicyBatch:
        """
        The samples of the policy step (single path: the rollout, thinned by ``sub_sampling_factor``).

        :param observations: all observations of the rollout
        :param actions: all actions of the rollout
        :param advantages: all advantages of the rollout
        :return: the batch
        """
        step = self.sub_sampling_factor
        if step > 1:
            observations = index_observations(observations, slice(None, None, step))
            actions, advantages = actions[::step], advantages[::step]
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return PolicyBatch(observations, actions, advantages)

    def _surrogate_objective(self, log_prob: th.Tensor, old_log_prob: th.Tensor, batch: PolicyBatch) -> th.Tensor:
        """
        The surrogate ``L(theta)``: the mean of the likelihood ratio times the advantage.

        :param log_prob: log-probabilities of the batch's actions under the current parameters
        :param old_log_prob: the same under the old parameters (detached)
        :param batch: the batch
        :return: a scalar to maximize
        """
        return (th.exp(log_prob - old_log_prob) * batch.weights).mean()

    def _apply_step(
        self,
        params: list[th.nn.Parameter],
        direction: th.Tensor,
        full_step_scale: float,
        evaluate: Any,
        old_objective: float,
    ) -> StepOutcome:
        """
        The step rule: move ``params`` along the natural-gradient ``direction``.

        :param params: the actor's parameters
        :param direction: the conjugate-gradient solution ``s ~ F^-1 g``
        :param full_step_scale: ``beta = sqrt(2 delta / s^T F s)``
        :param evaluate: returns ``(objective, mean KL)`` at the current parameters
        :param old_objective: the objective at the old parameters
        :return: what was done
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ the shared step

    def _actor_parameters(self, distribution: Distribution) -> list[th.nn.Parameter]:
        """Parameters the action distribution depends on (found once through autograd)."""
        if self._actor_params is None:
            params = [p for p in self.policy.parameters() if p.requires_grad]
            probe = th.stack([t.sum() for t in _distribution_tensors(distribution)]).sum()
            grads = th.autograd.grad(probe, params, retain_graph=True, allow_unused=True)
            self._actor_params = [p for p, g in zip(params, grads, strict=True) if g is not None]
        return self._actor_params

    def _natural_gradient_step(self, batch: PolicyBatch) -> dict[str, float]:
        """
        One trust-region step on ``batch``; the step rule comes from :meth:`_apply_step`.

        A non-finite value anywhere (weights, gradient, Fisher-vector product, CG solution) skips the step and
        leaves the parameters untouched.

        :param batch: the samples
        :return: diagnostics to log
        """
        policy = self.policy
        distribution = policy.get_distribution(batch.observations)
        old_distribution = detach_distribution(distribution)
        log_prob = distribution.log_prob(batch.actions)
        old_log_prob = log_prob.detach()
        params = self._actor_parameters(distribution)

        objective = self._surrogate_objective(log_prob, old_log_prob, batch)
        gradient = flat_grad(objective, params, retain_graph=True)
        old_objective = float(objective.item())
        stats: dict[str, float] = {"policy_objective": old_objective}
        if not (th.isfinite(batch.weights).all() and th.isfinite(gradient).all()):
            return self._skip_step(stats, "non-finite advantages or gradient")

        fisher_vector_product = self._fisher_vector_product(batch, distribution, old_distribution, params)
        cg = conjugate_gradient(fisher_vector_product, gradient, self.cg_max_steps)
        direction = cg.solution
        stats.update(cg_residual=cg.residual_norm, cg_iterations=float(cg.iterations))
        if not th.isfinite(direction).all():
            return self._skip_step(stats, "non-finite conjugate-gradient solution")
        fisher_direction = fisher_vector_product(direction) - self.cg_damping * direction
        beta = full_step_scale(direction, fisher_direction, self.target_kl)
        if not np.isfinite(beta):
            return self._skip_step(stats, "non-positive or non-finite curvature s^T F s")

        def evaluate() -> tuple[float, float]:
            with th.no_grad():
                new_distribution = policy.get_distribution(batch.observations)
                new_log_prob = new_distribution.log_prob(batch.actions)
                new_objective = self._surrogate_objective(new_log_prob, old_log_prob, batch)
                kl = kl_per_state(old_distribution, new_distribution).mean()
            return float(new_objective.item()), float(kl.item())

        outcome = self._apply_step(params, direction, beta, evaluate, old_objective)
        if outcome.non_finite:
            self.skipped_updates += 1
        stats.update(
            kl_divergence_loss=outcome.kl,
            is_line_search_success=float(outcome.accepted),
            line_search_iterations=float(outcome.line_search_iterations),
            step_size=outcome.step_size,
            surrogate_improvement=outcome.objective - old_objective,
            **outcome.extra,
        )
        return stats

    def _fisher_vector_product(
        self,
        batch: PolicyBatch,
        distribution: Distribution,
        old_distribution: Distribution,
        params: list[th.nn.Parameter],
    ) -> Callable[[th.Tensor], th.Tensor]:
        """
        ``v -> (F + cg_damping I) v`` on the batch (or a ``fisher_sample_fraction`` subsample of it).

        Plain MLP policies use the Gauss-Newton form (no second-order graph); everything else double back-propagates
        through the mean KL. Both are the analytic Fisher (the KL's Hessian at the old parameters).
        """
        observations, n_samples = batch.observations, len(batch.actions)
        n_fisher = max(1, round(self.fisher_sample_fraction * n_samples))
        index = th.randperm(n_samples, device=self.device)[:n_fisher] if n_fisher < n_samples else None
        if index is not None:
            observations = index_observations(observations, index)
        fast = gauss_newton_fisher_vector_product_fn(self.policy, observations, params, self.cg_damping)  # type: ignore[arg-type]
        if fast is not None:
            return fast
        if index is not None:
            distribution = self.policy.get_distribution(observations)
            old_distribution = detach_distribution(distribution)
        kl = kl_per_state(old_distribution, distribution).mean()
        return fisher_vector_product_fn(kl, params, self.cg_damping)

    def _skip_step(self, stats: dict[str, float], reason: str) -> dict[str, float]:
        self.skipped_updates += 1
        if self.verbose >= 1:
            print(f"{type(self).__name__}: skipped the policy step ({reason}); parameters unchanged.")
        stats.update(kl_divergence_loss=0.0, is_line_search_success=0.0, step_size=0.0, line_search_iterations=0.0)
        return stats

    # ------------------------------------------------------------------ critic

    def _fit_critic(self, observations: PyTorchObs, returns: th.Tensor) -> list[float]:
        """
        Fit the value function with Adam: ``n_critic_updates`` epochs of shuffled mini-batches of ``batch_size``.

        Only the critic's gradients are computed (the actor's stay ``None``, so Adam leaves the actor alone); a features
        extractor shared with the actor is not trained by the critic, or it would move the policy after the trust-region
        step.

        :param observations: all observations of the rollout
        :param returns: the regression targets
        :return: the mini-batch losses
        """
        if not th.isfinite(returns).all():
            return []
        optimizer = self.policy.optimizer
        critic_layers = mlp_layers(self.policy, "critic") if isinstance(observations, th.Tensor) else None
        n_samples = len(returns)
        numpy_fit = NumpyAdamFit.create(critic_layers, optimizer)
        if numpy_fit is not None:  # plain MLP critic with Adam on CPU: the same steps in NumPy, no framework overhead
            inputs = observations.cpu().numpy().astype(np.float32).reshape(n_samples, -1)  # type: ignore[union-attr]
            targets = returns.cpu().numpy().astype(np.float32)
            with threadpool_limits(limits=1, user_api="blas"):  # multi-threaded BLAS only slows matrices this small
                losses = [numpy_fit.step(inputs[index], targets[index]) for index in self._minibatches(n_samples)]
            numpy_fit.write_back()
            return losses
        loss_tensors = []
        for batch_indices in self._minibatches(n_samples):
            index = th.as_tensor(batch_indices, device=self.device)
            optimizer.zero_grad(set_to_none=True)
            if critic_layers is not None:  # plain MLP critic: the same gradient, computed by hand
                loss_tensors.append(mse_gradients(critic_layers, observations[index], returns[index]))  # type: ignore[index]
            else:
                values = self._critic_values(index_observations(observations, index)).flatten()
                loss = F.mse_loss(values, returns[index])
                loss.backward()
                loss_tensors.append(loss.detach())
            optimizer.step()
        return th.stack(loss_tensors).tolist() if loss_tensors else []

    def _minibatches(self, n_samples: int) -> Iterator[np.ndarray]:
        """Indices of ``n_critic_updates`` epochs of shuffled mini-batches (drawn from torch's RNG, so ``seed`` holds)."""
        for _ in range(self.n_critic_updates):
            permutation = th.randperm(n_samples).numpy()
            for start in range(0, n_samples, self.batch_size):
                yield permutation[start : start + self.batch_size]

    def _critic_values(self, observations: PyTorchObs) -> th.Tensor:
        """The critic's values, with a features extractor shared with the actor held fixed."""
        policy = self.policy
        if not policy.share_features_extractor:
            return policy.predict_values(observations)
        with th.no_grad():
            features = policy.extract_features(observations)
        return policy.value_net(policy.mlp_extractor.forward_critic(features))  # type: ignore[arg-type]

    def learn(
        self: SelfNaturalGradientAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfNaturalGradientAlgorithm:
        """
        Train for ``total_timesteps`` environment steps (simulator steps for the vine method).

        :param total_timesteps: the number of steps to train for
        :param callback: callback(s) called at every step
        :param log_interval: log every ``log_interval`` iterations
        :param tb_log_name: the run's name in tensorboard (default: the class name)
        :param reset_num_timesteps: whether to reset the step counter (False continues a previous ``learn``)
        :param progress_bar: display a progress bar (needs tqdm and rich)
        :return: the trained model
        """
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    # ------------------------------------------------------------------ train

    def _rollout_tensors(self) -> tuple[PyTorchObs, th.Tensor, th.Tensor, th.Tensor]:
        """All samples of the rollout buffer as tensors: observations, actions, advantages, returns."""
        data = next(self.rollout_buffer.get(batch_size=None))
        actions = data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        return data.observations, actions, data.advantages, data.returns

    def train(self) -> None:
        """Update the policy with one natural-gradient step, then fit the critic."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        observations, actions, advantages, returns = self._rollout_tensors()

        batch = self._policy_batch(observations, actions, advantages)
        stats = self._natural_gradient_step(batch)
        value_losses = self._fit_critic(observations, returns)
        self._n_updates += 1

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        for key, value in stats.items():
            self.logger.record(f"train/{key}", value)
        self.logger.record("train/value_loss", float(np.mean(value_losses)) if value_losses else float("nan"))
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/skipped_updates", self.skipped_updates)
        if isinstance(self.policy.action_dist, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")


def _distribution_tensors(distribution: Distribution) -> list[th.Tensor]:
    dists = distribution.distribution if isinstance(distribution.distribution, list) else [distribution.distribution]
    tensors = []
    for dist in dists:
        if isinstance(dist, th.distributions.Normal):
            tensors += [dist.loc, dist.scale]
        else:
            tensors.append(dist.logits)  # type: ignore[attr-defined]
    return tensors
