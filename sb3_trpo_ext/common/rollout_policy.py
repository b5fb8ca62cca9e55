"""
The policy frozen for a rollout, and what rollouts share: :class:`RolloutPolicy` with its :class:`RolloutNoise`, the
env-action conversion, the NaN-observation check and the observation stacker.

:class:`RolloutPolicy` serves the trunk's rollouts (:func:`sb3_trpo_ext.common.rollouts.collect_rollouts_fast`) and
the vine's branches (:mod:`sb3_trpo_ext.vine.branches`). Per call it:

- runs the actor and the critic (in NumPy for plain MLP policies, see :mod:`sb3_trpo_ext.common.fast_mlp`; one
  torch forward otherwise; SB3's own ``policy.forward`` for a policy the fast paths are not verified for) and draws
  the action from noise generated for the whole rollout at once (one RNG call instead of one per step, so ``seed``
  still makes runs reproducible);
- computes the log-probability of the drawn action in closed form from that noise (no distribution object).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor

from sb3_trpo_ext.common.backends import Backends
from sb3_trpo_ext.common.fast_mlp import MlpPlan, NumpyMlp, mlp_inputs, mlp_plan, side_by_side
from sb3_trpo_ext.common.precision import BFloat16Networks, mixed_precision

Observation = np.ndarray | dict[str, np.ndarray]

_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


@dataclass
class RolloutNoise:
    """
    The sampling noise of a whole rollout, drawn up front in one RNG call: one *row* per env (or branch), one slice
    per policy call. Plain data, so that it can be shipped to the worker that runs a branch: with common random
    numbers, branches given the same row act with the same noise wherever they run.

    - ``"gaussian"``: standard normal ``(n_steps, n_rows, action_dim)``;
    - ``"categorical"``: Gumbel noise on the logits (Gumbel-max trick), ``(n_steps, n_rows, sum of n)``;
    - ``"bernoulli"``: uniform ``(n_steps, n_rows, n_bits)``;
    - ``"sde"``: one gSDE exploration matrix per row, ``(n_periods, n_rows, latent_dim, action_dim)``, a new one
      every ``sde_sample_freq`` calls (SB3 draws one matrix per env and resamples them at that frequency);
    - ``"distribution"``: none (any other distribution samples through its own object).
    """

    kind: str
    values: np.ndarray | None
    sde_sample_freq: int = -1

    @classmethod
    def draw(cls, policy: ActorCriticPolicy, n_rows: int, n_steps: int, sde_sample_freq: int = -1) -> "RolloutNoise":
        """
        :param policy: the policy whose distribution the noise is for
        :param n_rows: number of rows (envs or branches)
        :param n_steps: number of policy calls
        :param sde_sample_freq: gSDE resampling frequency in calls (-1: one matrix per row for the whole rollout)
        :return: the noise
        """
        dist = policy.action_dist
        shape = (n_steps, n_rows)
        if isinstance(dist, StateDependentNoiseDistribution):
            n_periods = -(-n_steps // sde_sample_freq) if sde_sample_freq > 0 else 1
            with th.no_grad():
                std = dist.get_std(policy.log_std).cpu()
                matrices = th.randn(n_periods, n_rows, *std.shape) * std
            return cls("sde", matrices.numpy(), sde_sample_freq)
        if type(dist) is DiagGaussianDistribution:
            return cls("gaussian", th.randn(*shape, dist.action_dim).numpy())
        if isinstance(dist, CategoricalDistribution):
            return cls("categorical", _gumbel((*shape, dist.action_dim)).numpy())
        if isinstance(dist, MultiCategoricalDistribution):
            return cls("categorical", _gumbel((*shape, int(sum(dist.action_dims)))).numpy())
        if isinstance(dist, BernoulliDistribution):
            return cls("bernoulli", th.rand(*shape, dist.action_dims).numpy())
        return cls("distribution", None)

    def select_rows(self, rows: np.ndarray) -> "RolloutNoise":
        """:param rows: row indices (repeats allowed)
        :return: the noise of those rows, row ``i`` of the result being row ``rows[i]`` of this one"""
        return replace(self, values=None if self.values is None else self.values[:, rows])

    def at(self, step: int, rows: np.ndarray | None) -> np.ndarray | None:
        """:param step: the policy call
        :param rows: the row of each observation (None: row ``i`` for observation ``i``)
        :return: that call's noise (gSDE: the exploration matrices in force)"""
        if self.values is None:
            return None
        period = step // self.sde_sample_freq if self.kind == "sde" and self.sde_sample_freq > 0 else 0
        noise = self.values[period if self.kind == "sde" else step]
        return noise if rows is None else noise[rows]


class RolloutPolicy:
    """
    The policy, frozen for one rollout: actions, their log-probabilities and the critic's values, one batch of
    observations at a time, with the sampling noise drawn up front (:class:`RolloutNoise`).

    Each call uses one row of noise per observation (by default row ``i`` for observation ``i``); a caller that
    wants several observations to share noise (the vine method's common random numbers) passes ``rows``.
    Diagonal Gaussian, gSDE, Categorical, MultiCategorical and Bernoulli policies draw their actions here;
    anything else (a custom distribution) goes through the policy's own distribution object. With
    ``backends.rollouts == "sb3"`` (a policy the fast paths are not verified for) every call is SB3's own
    ``policy(obs)`` (its ``forward``), and the noise is not used.

    :param policy: the actor-critic policy (fixed for the rollout)
    :param noise: the rollout's noise
    :param backends: the algorithm's decision (``model.backends``): which paths the actor and the critic run
    :param plan: the policy's MLP plan (``model.mlp_plan``; default: read off the policy)
    """

    def __init__(
        self, policy: ActorCriticPolicy, noise: RolloutNoise, backends: Backends, plan: MlpPlan | None = None
    ) -> None:
        self.policy = policy
        self.noise = noise
        self.kind = noise.kind if backends.rollouts == "fast" else "forward"
        self.precision = backends.precision
        # bfloat16 rollouts: the networks cast once for the rollout (the policy is fixed while it runs)
        self.bfloat16_networks = None
        if self.precision == "bfloat16" and self.kind in ("gaussian", "categorical", "bernoulli", "sde"):
            self.bfloat16_networks = BFloat16Networks(policy)
        self.step = 0
        self.action_shape: tuple[int, ...] = policy.action_space.shape or ()
        dist = policy.action_dist
        self.split: list[int] = []
        if self.kind == "gaussian":
            self.std = th.exp(policy.log_std.detach()).cpu().numpy().astype(np.float32)
            self.log_prob_constant = -float(np.log(self.std).sum()) - dist.action_dim * _HALF_LOG_2PI  # type: ignore[attr-defined]
        elif isinstance(dist, MultiCategoricalDistribution):
            self.split = [int(i) for i in np.cumsum(dist.action_dims)[:-1]]
        plan = plan if plan is not None else mlp_plan(policy)
        self.input_keys = plan.input_keys
        self.numpy_actor = NumpyMlp(plan.actor) if backends.rollout_actor == "numpy-mlp" else None  # type: ignore[arg-type]
        self.numpy_critic = NumpyMlp(plan.critic) if backends.rollout_critic == "numpy-mlp" else None  # type: ignore[arg-type]
        # both on NumPy: one block-diagonal forward per step gives the actor's output and the value together
        both = None
        if self.numpy_actor is not None and self.numpy_critic is not None:
            both = side_by_side(plan.actor, plan.critic)  # type: ignore[arg-type]
        self.numpy_actor_critic = NumpyMlp(both) if both is not None else None
        self.half_squared_noise = None
        if self.kind == "gaussian":  # the Gaussian log-density of every draw, in one vectorized pass
            self.half_squared_noise = 0.5 * np.square(noise.values).sum(axis=-1)  # type: ignore[arg-type]

    def seek(self, step: int) -> None:
        """:param step: the policy call whose noise the next call uses (a branch's step, when branches start late)"""
        self.step = step

    # ------------------------------------------------------------------ forwards

    def _torch_forward(self, obs: Observation, need_values: bool) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """:return: the actor's output (mean actions or logits), its latent features and, if asked, the values"""
        policy = self.policy
        if self.bfloat16_networks is not None:
            observations = obs_as_tensor(obs, policy.device)  # type: ignore[arg-type]
            return self.bfloat16_networks(observations, need_values and self.numpy_critic is None)
        with th.no_grad(), mixed_precision(self.precision, policy.device):
            observations = obs_as_tensor(obs, policy.device)  # type: ignore[arg-type]
            features = policy.extract_features(observations)
            if isinstance(features, tuple):
                pi_features, vf_features = features
            else:
                pi_features = vf_features = features
            latent_pi = policy.mlp_extractor.forward_actor(pi_features)
            values = None
            if need_values and self.numpy_critic is None:
                values = policy.value_net(policy.mlp_extractor.forward_critic(vf_features)).flatten().float()
            return policy.action_net(latent_pi).float(), latent_pi.float(), values

    def values(self, obs: Observation) -> np.ndarray:
        """
        :param obs: a batch of observations
        :return: the critic's values, shape ``(batch,)``
        """
        if self.numpy_critic is not None:
            return self.numpy_critic(mlp_inputs(obs, self.input_keys))[:, 0]
        observations = obs_as_tensor(obs, self.policy.device)  # type: ignore[arg-type]
        if self.bfloat16_networks is not None:
            return self.bfloat16_networks(observations, need_values=True)[2].cpu().numpy()  # type: ignore[union-attr]
        with th.no_grad(), mixed_precision(self.precision, self.policy.device):
            values = self.policy.predict_values(observations)
        return values.flatten().float().cpu().numpy()

    # ------------------------------------------------------------------ sampling

    def __call__(
        self, obs: Observation, rows: np.ndarray | None = None, need_values: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """
        Draw one action per observation with this call's noise.

        :param obs: a batch of observations
        :param rows: the noise row of each observation (default: row ``i`` for observation ``i``)
        :param need_values: also return the critic's values
        :return: actions of shape ``(batch, *action_space.shape)``, their log-probabilities ``(batch,)`` and the
            values ``(batch,)`` (``None`` unless ``need_values``)
        """
        noise = self.noise.at(self.step, rows)
        self.step += 1
        values = None
        if self.kind == "forward":
            actions, log_probs, values = self._forward(obs)
        elif self.kind == "distribution":
            actions, log_probs, values = self._sample_from_distribution(obs, need_values)
        elif self.kind == "sde":
            actions, log_probs, values = self._sample_sde(obs, noise, need_values)  # type: ignore[arg-type]
        else:
            if need_values and self.numpy_actor_critic is not None:
                both = self.numpy_actor_critic(mlp_inputs(obs, self.input_keys))
                out, values = both[:, :-1], both[:, -1]
            elif self.numpy_actor is not None:
                out = self.numpy_actor(mlp_inputs(obs, self.input_keys))
            else:
                actor_out, _, values_t = self._torch_forward(obs, need_values)
                out = actor_out.cpu().numpy()
                values = None if values_t is None else values_t.cpu().numpy()
            actions, log_probs = self._sample(out, noise, rows)  # type: ignore[arg-type]
        if need_values and values is None:
            values = self.values(obs)
        return actions.reshape(-1, *self.action_shape), log_probs, values

    def _sample(self, out: np.ndarray, noise: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Actions and log-probabilities from the actor's output and this call's noise, in closed form."""
        if self.kind == "gaussian":
            half_squared = self.half_squared_noise[self.step - 1]  # type: ignore[index]
            log_probs = self.log_prob_constant - (half_squared if rows is None else half_squared[rows])
            return out + self.std * noise, log_probs
        if self.kind == "bernoulli":
            actions = (noise < 1.0 / (1.0 + np.exp(-out))).astype(np.float32)
            # log sigmoid(x) for a 1, log sigmoid(-x) for a 0
            signed = np.where(actions > 0.5, out, -out)
            return actions, -np.logaddexp(0.0, -signed).sum(axis=-1)
        perturbed = out + noise  # Gumbel-max trick: argmax(logits + Gumbel noise) ~ Categorical(logits)
        chunks = np.split(perturbed, self.split, axis=-1) if self.split else [perturbed]
        logits = np.split(out, self.split, axis=-1) if self.split else [out]
        choices = [chunk.argmax(axis=-1) for chunk in chunks]
        log_probs = np.zeros(len(out), dtype=np.float32)
        for choice, logit in zip(choices, logits, strict=True):
            top = logit.max(axis=-1, keepdims=True)
            log_normalizer = top[:, 0] + np.log(np.exp(logit - top).sum(axis=-1))
            log_probs += np.take_along_axis(logit, choice[:, None], axis=-1)[:, 0] - log_normalizer
        actions = np.stack(choices, axis=-1) if self.split else choices[0]
        return actions, log_probs

    def _sample_sde(
        self, obs: Observation, exploration_matrices: np.ndarray, need_values: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """gSDE: ``mean + latent @ E_row`` with each row's own exploration matrix ``E_row``."""
        mean, latent, values = self._torch_forward(obs, need_values)
        dist: StateDependentNoiseDistribution = self.policy.action_dist  # type: ignore[assignment]
        matrices = th.as_tensor(exploration_matrices, device=mean.device)
        with th.no_grad():
            latent_sde = latent if dist.learn_features else latent.detach()
            actions = mean + th.bmm(latent_sde.unsqueeze(1), matrices).squeeze(1)
            if dist.bijector is not None:
                actions = dist.bijector.forward(actions)
            log_probs = dist.proba_distribution(mean, self.policy.log_std, latent_sde).log_prob(actions)
        return actions.cpu().numpy(), log_probs.cpu().numpy(), None if values is None else values.cpu().numpy()

    def _forward(self, obs: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SB3's own ``policy(obs)``: actions, values and log-probabilities from the policy's ``forward``."""
        with th.no_grad():
            actions, values, log_probs = self.policy(obs_as_tensor(obs, self.policy.device))  # type: ignore[arg-type]
        return actions.cpu().numpy(), log_probs.cpu().numpy(), values.flatten().cpu().numpy()

    def _sample_from_distribution(
        self, obs: Observation, need_values: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        with th.no_grad():
            observations = obs_as_tensor(obs, self.policy.device)  # type: ignore[arg-type]
            distribution = self.policy.get_distribution(observations)
            actions = distribution.get_actions()
            log_probs = distribution.log_prob(actions)
            values = self.policy.predict_values(observations).flatten().cpu().numpy() if need_values else None
        return actions.cpu().numpy(), log_probs.cpu().numpy(), values


def _gumbel(shape: tuple[int, ...]) -> th.Tensor:
    uniform = th.rand(shape).clamp_(min=1e-20, max=1.0 - 1e-7)
    return -th.log(-th.log(uniform))


def env_action_function(policy: ActorCriticPolicy, action_space: spaces.Space) -> Callable[[np.ndarray], np.ndarray]:
    """
    How actions become what the env takes, as SB3 does: Box actions unsquashed (``squash_output``) or clipped to the
    bounds (looked up once: ``np.clip``'s dispatch costs more than the clipping), other spaces unchanged.

    :param policy: the policy
    :param action_space: the action space
    :return: a function of actions of shape ``(batch, *action_space.shape)``
    """
    if isinstance(action_space, spaces.Box):
        if policy.squash_output:
            return policy.unscale_action
        low, high = action_space.low, action_space.high
        return lambda actions: np.minimum(np.maximum(actions, low), high)
    return lambda actions: actions


def check_finite_observations(obs: Observation, where: str, step: int | None = None) -> None:
    """
    Stop with a clear error when an observation holds NaN or inf (the policy's distribution cannot be built on it,
    and one such sample would poison the trust-region step).

    :param obs: a batch of observations, one per env (or branch)
    :param where: where they come from, for the message
    :param step: the step, appended to ``where`` (formatted only for the message: this runs every step)
    :raises ValueError: naming the env index, the observation key and the fix
    """
    arrays = obs.items() if isinstance(obs, dict) else [("", obs)]
    for key, array in arrays:
        # a finite sum means every entry is finite (NaN or inf propagate); only an overflowing sum needs the full check
        if array.dtype.kind != "f" or np.isfinite(np.sum(array)) or np.isfinite(array).all():
            continue
        flat = array.reshape(len(array), -1)
        index = int(np.flatnonzero(~np.isfinite(flat).all(axis=1))[0])
        bad = flat[index][~np.isfinite(flat[index])]
        name = f" key {key!r}" if key else ""
        if step is not None:
            where = f"{where} {step}"
        raise ValueError(
            f"Non-finite observation{name} ({bad[:3].tolist()}...) from env {index} {where}: the policy cannot act on NaN "
            f"or inf. Find where it comes from with SB3's VecCheckNan (env = VecCheckNan(env, raise_exception=True)), "
            f"then fix the env, or clip its observations (VecNormalize(env, clip_obs=...) does not remove NaN)."
        )


def stack_observations(observations: list[Observation]) -> Observation:
    """:param observations: single observations (arrays or dicts of arrays)
    :return: them as one batch"""
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}  # type: ignore[index]
    return np.stack(observations)  # type: ignore[arg-type]
