"""
``NaturalGradientAlgorithm``: the base class of the TRPO family.

It owns the shared ``train()`` skeleton: build the batch, estimate the surrogate objective and its gradient,
solve ``F s = g`` with conjugate gradient on the analytic Fisher, take a step with the subclass's step rule,
fit the critic, log. Subclasses differ only where the methods differ:

- :meth:`NaturalGradientAlgorithm._step_rule`: the step rule (line search for TRPO, a fixed step for NPG);
- ``train()``: which :class:`~sb3_trpo_ext.common.policy_batch.PolicyBatch` the step is taken on (the rollout's
  advantages here; the vine's Q-values of K actions per state);
- ``collect_rollouts``: how samples are gathered.
"""

import contextlib
import dataclasses
import inspect
import io
import pathlib
import time
from typing import Any, ClassVar, TypeVar

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
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.backends import choose_backends
from sb3_trpo_ext.common.critic import fit_critic
from sb3_trpo_ext.common.fast_mlp import mlp_plan
from sb3_trpo_ext.common.fisher import SUPPORTED_DISTRIBUTIONS, actor_parameters
from sb3_trpo_ext.common.natural_gradient import STEP_CHUNK_SIZE, StepRule, StepSettings, natural_gradient_step
from sb3_trpo_ext.common.policy_batch import AdvantageBatch, PolicyBatch
from sb3_trpo_ext.common.precision import PRECISION_SETTINGS, PrecisionSetting
from sb3_trpo_ext.common.preprocessing import channels_last_safe, images_normalized_once, normalizes_images
from sb3_trpo_ext.common.rollouts import collect
from sb3_trpo_ext.common.saved_models import check_saved_algorithm
from sb3_trpo_ext.common.trust_region import (
    TrustRegionUnits,
    check_trust_region_units,
    kl_dimensions,
    resolve_trust_region,
)
from sb3_trpo_ext.common.validation import (
    check_action_space,
    check_keywords,
    check_rollout_size,
    check_sb3_keywords,
    unknown_policy_error,
)

SelfNaturalGradientAlgorithm = TypeVar("SelfNaturalGradientAlgorithm", bound="NaturalGradientAlgorithm")


class NaturalGradientAlgorithm(OnPolicyAlgorithm):
    """
    Base class of natural-gradient policy optimization (TRPO, natural policy gradient, vine TRPO).

    :param policy: the policy model (``MlpPolicy``, ``CnnPolicy``, ``MultiInputPolicy``) or a policy class
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate of the critic's Adam optimizer (constant or schedule)
    :param n_steps: steps to run per environment per update
    :param batch_size: mini-batch size of the critic's updates
    :param gamma: discount factor
    :param cg_max_steps: conjugate-gradient iterations ``k`` (the paper's 10; sb3-contrib's default is 15: the docs'
        results page compares the class defaults of both)
    :param cg_damping: damping added to the Fisher of the whole-distribution KL (``None``: 0.1 per action dimension,
        sb3-contrib's default; see ``trust_region_units``)
    :param n_critic_updates: epochs of critic (value function) updates per rollout
    :param gae_lambda: GAE trade-off of bias and variance
    :param use_sde: use generalized State Dependent Exploration
    :param sde_sample_freq: resample the gSDE noise every n steps (-1: only at the start of a rollout)
    :param rollout_buffer_class: rollout buffer class (``None``: chosen from the observation space)
    :param rollout_buffer_kwargs: keyword arguments of the rollout buffer
    :param normalize_advantage: normalize the advantages
    :param target_kl: the trust-region size ``delta``: bound on the mean over states of the KL divergence between the
        whole old and new action distributions (``None``: 0.01 per action dimension, sb3-contrib's default trust
        region; see :mod:`sb3_trpo_ext.common.trust_region` for the runs that chose it)
    :param trust_region_units: how an explicit ``target_kl`` and ``cg_damping`` are read: ``"distribution"`` (the
        paper's whole-distribution KL) or ``"sb3-contrib"`` (per action dimension, as sb3-contrib's TRPO averages the
        KL: both are multiplied by the action dimension, so sb3-contrib's hyperparameters carry over unchanged)
    :param sub_sampling_factor: use only every k-th sample of the rollout for the policy step (as in sb3-contrib)
    :param fisher_sample_fraction: fraction of the policy batch used for the Fisher-vector products (the paper uses 0.1)
    :param damped_step_length: scale the full step by ``sqrt(2 delta / s^T (F + damping I) s)``, as sb3-contrib and
        the paper's reference code (modular_rl) do, instead of the undamped ``s^T F s`` of the paper's text (off by
        default; the docs' results page compares the two: ``benchmarks/ablation.py`` variant ``damped-full-step`` and
        the ``trpo_ext-defaults-damped`` cells of the defaults matrix)
    :param precision: the number format of the rollout's forward passes, the critic fit and the Fisher-vector
        products: ``"auto"`` (bfloat16 for a convolutional policy on a device with bfloat16 units, else float32),
        ``"float32"`` or ``"bfloat16"``; the gradient, conjugate gradient, step length and line search (the measured
        KL) are float32 whatever it says (:mod:`sb3_trpo_ext.common.precision`; the choice is ``model.backends``)
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
        cg_damping: float | None = None,
        n_critic_updates: int = 10,
        gae_lambda: float = 0.95,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = True,
        target_kl: float | None = None,
        trust_region_units: TrustRegionUnits = "distribution",
        sub_sampling_factor: int = 1,
        fisher_sample_fraction: float = 1.0,
        damped_step_length: bool = False,
        precision: PrecisionSetting = "auto",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        name = type(self).__name__
        check_keywords(
            learning_rate, n_steps, batch_size, gamma, gae_lambda, cg_max_steps, cg_damping, n_critic_updates, target_kl,
            sub_sampling_factor, fisher_sample_fraction,
        )  # fmt: skip
        check_sb3_keywords(sde_sample_freq, stats_window_size, verbose, seed)
        check_trust_region_units(trust_region_units)
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
            check_rollout_size(batch_size, n_steps, self.n_envs, normalize_advantage)

        self.batch_size = batch_size
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.n_critic_updates = n_critic_updates
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.trust_region_units = trust_region_units
        self.sub_sampling_factor = sub_sampling_factor
        self.fisher_sample_fraction = fisher_sample_fraction
        self.damped_step_length = damped_step_length
        if precision not in PRECISION_SETTINGS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISION_SETTINGS))}, got {precision!r}.")
        self.precision = precision
        self.skipped_updates = 0

        if _init_setup_model:
            self._setup_model()

    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        """SB3's, with a ``ValueError`` that lists the valid names for an unknown one."""
        if policy_name not in self.policy_aliases:
            raise unknown_policy_error(policy_name, self.policy_aliases, type(self).__name__)
        return super()._get_policy_from_name(policy_name)

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfNaturalGradientAlgorithm],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfNaturalGradientAlgorithm:
        """
        SB3's ``load``, refusing a zip saved by another of this package's algorithms (a ``TRPO`` zip given to
        ``VineTRPO.load``, ...) with a ``ValueError`` naming both.

        :param path: the zip (a path, with or without ``.zip``, or an open file)
        :param env: the environment to run the loaded model on (None: prediction only)
        :param device: device to run on
        :param custom_objects: objects that replace the saved ones of the same keys instead of being deserialized
        :param print_system_info: print the saving and the current system's info
        :param force_reset: reset the env before training
        :param kwargs: attributes to change on loading
        :return: the loaded model
        """
        check_saved_algorithm(path, cls, inspect.signature(cls.__init__).parameters)
        return super().load(  # type: ignore[return-value]
            path, env, device, custom_objects=custom_objects, print_system_info=print_system_info,
            force_reset=force_reset, **kwargs,
        )  # fmt: skip

    def _setup_model(self) -> None:
        get_distribution = getattr(self.policy_class, "get_distribution", None)
        if get_distribution is not None and "action_masks" in inspect.signature(get_distribution).parameters:
            raise ValueError(
                f"{type(self).__name__} takes no maskable policy ({self.policy_class.__name__}): for action masks use "
                "sb3_trpo_ext.MaskableTRPO or MaskableNaturalPG (the vine method has no masked form)."
            )
        super()._setup_model()
        if not isinstance(self.policy, ActorCriticPolicy):
            raise TypeError(f"{type(self).__name__} needs an ActorCriticPolicy, got {type(self.policy).__name__}")
        if not isinstance(self.policy.action_dist, SUPPORTED_DISTRIBUTIONS):
            raise ValueError(f"Unsupported action distribution {type(self.policy.action_dist).__name__}")
        self._setup_step()

    def _setup_step(self) -> None:
        """
        The step's set-up once ``self.policy`` exists: the trust region, the backends. A class that builds its policy
        its own way (the maskable classes: sb3-contrib's maskable policies take no ``use_sde``) calls it after.
        """
        self.max_kl, self.fisher_damping = resolve_trust_region(
            self.target_kl, self.cg_damping, self.trust_region_units, self.action_space
        )
        """The bound on the mean whole-distribution KL of a step, and the Fisher's damping, as the step uses them."""
        training = self.policy.training
        self.policy.set_training_mode(False)  # the probe neither reads nor updates batch statistics
        self._actor_params = actor_parameters(self.policy, self._probe_distribution())
        """The parameters the action distribution depends on (the step's), found once through autograd."""
        self.policy.set_training_mode(training)
        self._normalizes_images = normalizes_images(self.policy)
        """Whether an update divides the image observations by 255 once (:mod:`~sb3_trpo_ext.common.preprocessing`)."""
        self._images_channels_last = channels_last_safe(self.policy)
        """Whether those images are laid out channels-last for the update's convolutions (faster on the CPU)."""
        self._step_chunk_size = STEP_CHUNK_SIZE if self._images_channels_last else None
        """The surrogate's passes over pieces of frames (same sums; the CPU's caches hold a piece's activations)."""
        self.mlp_plan = mlp_plan(self.policy)
        """What the NumPy paths run the policy with, read off it once (:class:`~sb3_trpo_ext.common.fast_mlp.MlpPlan`)."""
        self.backends = choose_backends(self.policy, self.precision, self.mlp_plan)
        """The implementation each part runs (:func:`~sb3_trpo_ext.common.backends.choose_backends`)."""
        if self.verbose >= 1:
            print(f"{type(self).__name__} backends: {self.backends}")

    # ------------------------------------------------------------------ rollouts

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect ``n_rollout_steps`` steps per environment with the current policy: SB3's own loop where
        ``self.backends.rollouts`` is ``"sb3"``, else the fast loop (same behaviour,
        :func:`~sb3_trpo_ext.common.rollouts.collect_rollouts_fast`; both in :func:`~sb3_trpo_ext.common.rollouts.collect`).

        :param env: the training environment
        :param callback: callback called at each step
        :param rollout_buffer: buffer to fill with rollouts
        :param n_rollout_steps: number of experiences to collect per environment
        :return: True if collection finished, False if a callback stopped it
        """
        return collect(self, env, callback, rollout_buffer, n_rollout_steps)

    # ------------------------------------------------------------------ hooks for subclasses

    def _step_rule(self) -> StepRule:
        """
        The step rule, the one place the subclasses' steps differ: how far to move along the natural-gradient
        direction (:class:`~sb3_trpo_ext.common.natural_gradient.LineSearch` for TRPO,
        :class:`~sb3_trpo_ext.common.natural_gradient.FixedStep` for NaturalPG).

        :return: the rule, with this model's settings
        """
        raise NotImplementedError

    def _probe_distribution(self) -> Distribution:
        """
        The policy's action distribution on one all-zeros observation, built with gradients, through which
        :func:`~sb3_trpo_ext.common.fisher.actor_parameters` finds the actor's parameters at setup (a recurrent class
        builds it from zero LSTM states).
        """
        return self.policy.get_distribution(self.policy.obs_to_tensor(zero_observation(self.observation_space))[0])

    # ------------------------------------------------------------------ the shared step

    def _natural_gradient_step(self, batch: PolicyBatch) -> dict[str, float]:
        """
        One trust-region step on ``batch`` (:func:`~sb3_trpo_ext.common.natural_gradient.natural_gradient_step` with
        this model's step rule and settings), counted as skipped where it was not tried or was undone.

        :param batch: the samples
        :return: the values to log under ``train/``
        """
        settings = StepSettings(
            self.max_kl, self.fisher_damping, self.cg_max_steps, self.backends.fisher, self.fisher_sample_fraction,
            self.damped_step_length, self.backends.precision, self._step_chunk_size,
        )  # fmt: skip
        outcome = natural_gradient_step(self.policy, batch, self._actor_params, self._step_rule(), settings, self.mlp_plan)
        if outcome.counts_as_skipped:
            self.skipped_updates += 1
        if outcome.skipped is not None and self.verbose >= 1:
            print(f"{type(self).__name__}: skipped the policy step ({outcome.skipped}); parameters unchanged.")
        return outcome.log_values()

    def save(self, path: Any, exclude: Any = None, include: Any = None) -> None:
        """
        Save as SB3 does, with ``target_kl`` and ``cg_damping`` written in sb3-contrib's units (per action dimension)
        and ``trust_region_units="sb3-contrib"``: the same trust region for our ``load`` and for sb3-contrib's, which
        can load and keep training our zips.

        :param path: where to save (path or file-like object)
        :param exclude: attributes not to save (besides the defaults)
        :param include: attributes to save that would otherwise be excluded
        """
        given = (self.target_kl, self.cg_damping, self.trust_region_units)
        d = kl_dimensions(self.action_space)
        self.target_kl, self.cg_damping, self.trust_region_units = self.max_kl / d, self.fisher_damping / d, "sb3-contrib"
        try:
            super().save(path, exclude=exclude, include=include)
        finally:
            self.target_kl, self.cg_damping, self.trust_region_units = given

    def _excluded_save_params(self) -> list[str]:
        # the plan holds the policy's own modules, and the actor's parameters are the policy's: both are rebuilt by
        # _setup_model on load
        return [
            *super()._excluded_save_params(),
            "mlp_plan",
            "_actor_params",
            "_normalizes_images",
            "_images_channels_last",
            "_step_chunk_size",
        ]

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

    def _rollout_samples(self) -> RolloutBufferSamples:
        """All samples of the rollout buffer as tensors, actions as the distributions' ``log_prob`` takes them."""
        data = next(self.rollout_buffer.get(batch_size=None))
        if isinstance(self.action_space, spaces.Discrete):
            data = data._replace(actions=data.actions.long().flatten())
        return data

    def train(self) -> None:
        """Update the policy with one natural-gradient step on the rollout's advantages, then fit the critic."""
        data = self._rollout_samples()
        batch = AdvantageBatch.from_rollout(
            data.observations, data.actions, data.advantages, self.sub_sampling_factor, self.normalize_advantage
        )
        self._update(batch, data)

    def _fit_critic(self, data: RolloutBufferSamples) -> list[float]:
        """
        Fit the critic on the rollout: ``n_critic_updates`` epochs of Adam on mini-batches of ``batch_size``, on the
        path of ``backends.critic_fit`` (:func:`~sb3_trpo_ext.common.critic.fit_critic`). A recurrent class fits it on
        sequences instead.

        :param data: the rollout buffer's samples (observations as the update's passes take them, and the returns)
        :return: the mini-batch losses
        """
        return fit_critic(
            self.backends.critic_fit,
            self.policy,
            data.observations,
            data.returns,
            self.batch_size,
            self.n_critic_updates,
            self.backends.precision,
            self.mlp_plan,
        )

    def _update(self, batch: PolicyBatch, data: RolloutBufferSamples) -> None:
        """
        The shared update: one natural-gradient step on ``batch``, the critic fitted on the rollout, the logs.

        :param batch: the samples of the policy step
        :param data: the rollout buffer's samples (observations and returns for the critic)
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        start = time.perf_counter()
        normalize_once = self._normalizes_images and self.backends.rollouts == "fast"
        with (
            images_normalized_once(self.policy, channels_last=self._images_channels_last)
            if normalize_once
            else contextlib.nullcontext(_unchanged)
        ) as normalize:
            normalized = dataclasses.replace(batch, observations=normalize(batch.observations))  # type: ignore[type-var]
            stats = self._natural_gradient_step(normalized)
            stepped = time.perf_counter()
            value_losses = self._fit_critic(data._replace(observations=normalize(data.observations)))  # type: ignore[arg-type]
        self._n_updates += 1
        # where an update's time goes (benchmarks/speed_atari.py reads these)
        self.logger.record("time/policy_step_s", stepped - start, exclude="tensorboard")
        self.logger.record("time/critic_fit_s", time.perf_counter() - stepped, exclude="tensorboard")

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        for key, value in stats.items():
            self.logger.record(f"train/{key}", value)
        self.logger.record("train/value_loss", float(np.mean(value_losses)) if value_losses else float("nan"))
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/skipped_updates", self.skipped_updates)
        if isinstance(self.policy.action_dist, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")


def _unchanged(observations: Any) -> Any:
    return observations


def zero_observation(space: spaces.Space) -> Any:
    """:return: an all-zeros observation of ``space`` (a dict of them for a ``Dict`` space), in its dtype"""
    if isinstance(space, spaces.Dict):
        return {key: zero_observation(subspace) for key, subspace in space.spaces.items()}
    return np.zeros(space.shape, dtype=space.dtype)
