"""
``MaskableTRPO`` and ``MaskableNaturalPG``: TRPO and the natural policy gradient with invalid-action masking, drop-in
where sb3-contrib's ``MaskablePPO`` is used (its policies, rollout buffer, ``ActionMasker``, ``MaskableEvalCallback``
and ``evaluate_policy``; ``learn(..., use_masking=False)``; ``predict(..., action_masks=...)``).

The masking parts are one mixin, :class:`MaskingMixin`: it builds sb3-contrib's maskable policy and buffer, collects
rollouts with each state's mask (``sb3_trpo_ext.maskable.rollouts.collect_masked_rollouts``) and takes the step
on a :class:`~sb3_trpo_ext.maskable.batch.MaskedAdvantageBatch`, so the surrogate, the KL of the trust region and the
Fisher are all those of the masked distributions. The step rules are TRPO's and NaturalPG's, unchanged.
"""

from typing import ClassVar, TypeVar

import numpy as np
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.ppo_mask.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.base import NaturalGradientAlgorithm
from sb3_trpo_ext.maskable.batch import as_engine_distribution, masked_batch
from sb3_trpo_ext.maskable.rollouts import collect_masked_rollouts
from sb3_trpo_ext.npg import NaturalPG
from sb3_trpo_ext.trpo import TRPO

SelfMasking = TypeVar("SelfMasking", bound="MaskingMixin")

MASKABLE_ACTION_SPACES = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
"""The action spaces sb3-contrib's maskable distributions cover."""


class MaskingMixin(NaturalGradientAlgorithm):
    """
    The masking parts of the maskable classes, placed before the algorithm in the bases
    (``class MaskableTRPO(MaskingMixin, TRPO)``): sb3-contrib's maskable policies and buffers, masked rollouts, the
    step on the masked batch, ``learn(..., use_masking=...)`` and ``predict(..., action_masks=...)``.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: MaskableActorCriticPolicy  # type: ignore[assignment]
    _use_masking: bool = True
    """What the current ``learn`` call said (SB3's loop gives ``collect_rollouts`` no other way to know)."""

    def _setup_model(self) -> None:
        name = type(self).__name__
        if not isinstance(self.action_space, MASKABLE_ACTION_SPACES):
            # SB3's own check, its type and message (sb3-contrib's MaskablePPO passes it the same spaces)
            raise AssertionError(
                f"The algorithm only supports {MASKABLE_ACTION_SPACES} as action spaces but {self.action_space} was "
                f"provided: {name} masks discrete actions (use TRPO for a Box action space)."
            )
        if not (isinstance(self.policy_class, type) and issubclass(self.policy_class, MaskableActorCriticPolicy)):
            given = getattr(self.policy_class, "__name__", self.policy_class)
            raise ValueError(
                f"{name} needs a maskable policy (sb3-contrib's MaskableActorCriticPolicy or a subclass; the names "
                f"{', '.join(map(repr, self.policy_aliases))}), got {given}."
            )
        if self.use_sde:
            raise ValueError(f"{name} has discrete actions: gSDE (use_sde=True) is for continuous ones.")
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        if self.rollout_buffer_class is None:
            dict_space = isinstance(self.observation_space, spaces.Dict)
            self.rollout_buffer_class = MaskableDictRolloutBuffer if dict_space else MaskableRolloutBuffer
        self.rollout_buffer = self.rollout_buffer_class(
            self.n_steps,
            self.observation_space,  # type: ignore[arg-type]
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **self.rollout_buffer_kwargs,
        )
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        ).to(self.device)
        self._setup_step()
        if self.backends.precision != "float32":
            raise ValueError(f"{name} runs in float32 (precision='float32' or 'auto'), got precision={self.precision!r}.")

    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
        use_masking: bool | None = None,
    ) -> bool:
        """
        Collect ``n_rollout_steps`` steps per environment, each state with its action mask
        (``sb3_trpo_ext.maskable.rollouts.collect_masked_rollouts``).

        :param env: the training environment
        :param callback: callback called at each step
        :param rollout_buffer: the maskable buffer to fill
        :param n_rollout_steps: number of experiences to collect per environment
        :param use_masking: apply the environment's masks (``None``: as the current ``learn`` call says)
        :return: True if collection finished, False if a callback stopped it
        """
        use_masking = self._use_masking if use_masking is None else use_masking
        return collect_masked_rollouts(self, env, callback, rollout_buffer, n_rollout_steps, use_masking)

    def train(self) -> None:
        """Update the policy with one natural-gradient step on the masked distributions, then fit the critic."""
        data = self._rollout_samples()
        batch = masked_batch(
            data.observations,
            data.actions,
            data.advantages,
            data.action_masks,  # type: ignore[attr-defined]
            self.sub_sampling_factor,
            self.normalize_advantage,
        )
        self._update(batch, data)

    def learn(  # type: ignore[override]
        self: SelfMasking,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfMasking:
        """
        Train for ``total_timesteps`` environment steps (``MaskablePPO.learn``'s keywords, in its order).

        :param total_timesteps: the number of steps to train for
        :param callback: callback(s) called at every step (``MaskableEvalCallback`` evaluates with masks)
        :param log_interval: log every ``log_interval`` iterations
        :param tb_log_name: the run's name in tensorboard (default: the class name)
        :param reset_num_timesteps: whether to reset the step counter (False continues a previous ``learn``)
        :param use_masking: apply the environment's action masks (False: learn as the unmasked algorithm, with an
            environment that need not give masks)
        :param progress_bar: display a progress bar (needs tqdm and rich)
        :return: the trained model
        """
        self._use_masking = use_masking
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        The policy's action for an observation, among the valid ones when ``action_masks`` is given.

        :param observation: the observation (or a batch of them)
        :param state: the last hidden states (unused: no recurrent policy)
        :param episode_start: the last episode starts (unused)
        :param deterministic: the most probable valid action instead of a sample
        :param action_masks: the observation's action mask (True where valid; ``get_action_masks(env)``), or None
        :return: the action and the (unchanged) state
        """
        return self.policy.predict(observation, state, episode_start, deterministic, action_masks=action_masks)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_use_masking"]

    def _probe_distribution(self) -> Distribution:
        """The unmasked distribution on one all-zeros observation, as the engine reads distributions."""
        return as_engine_distribution(super()._probe_distribution())  # type: ignore[arg-type]


def _masked_docstring(algorithm: type, summary: str) -> str:
    """``summary`` followed by the parameter list of ``algorithm``'s docstring (the keywords are the same)."""
    doc = algorithm.__doc__ or ""
    return summary + doc[doc.index("    :param policy:") :]


class MaskableTRPO(MaskingMixin, TRPO):  # type: ignore[misc]
    __doc__ = _masked_docstring(
        TRPO,
        """
    TRPO (single path) with invalid-action masking: sb3-contrib's ``MaskablePPO`` with TRPO's update.

    Each state's action mask, read from the environment in the rollout (``ActionMasker`` or the env's
    ``action_masks()``), is stored with the state; the surrogate, the mean KL of the trust region, its Fisher and the
    line search all use the distributions masked by those masks, so invalid actions have probability exactly zero
    everywhere. ``learn(..., use_masking=False)`` learns without masks; ``predict(..., action_masks=...)`` acts among
    the valid actions. Discrete, MultiDiscrete and (1-D) MultiBinary action spaces; sb3-contrib's maskable
    ``MlpPolicy``, ``CnnPolicy`` and ``MultiInputPolicy``; ``use_sde`` must stay False.

    Paper: https://arxiv.org/abs/1502.05477; masking: Huang and Ontañón (2020), https://arxiv.org/abs/2006.14171.

""",
    )


class MaskableNaturalPG(MaskingMixin, NaturalPG):  # type: ignore[misc]
    __doc__ = _masked_docstring(
        NaturalPG,
        """
    The natural policy gradient (a fixed step, no line search) with invalid-action masking, as :class:`MaskableTRPO`
    masks TRPO: every state's mask from the rollout is applied in the surrogate, the KL and the Fisher.

    ``learn(..., use_masking=False)`` learns without masks; ``predict(..., action_masks=...)`` acts among the valid
    actions. Discrete, MultiDiscrete and (1-D) MultiBinary action spaces; sb3-contrib's maskable ``MlpPolicy``,
    ``CnnPolicy`` and ``MultiInputPolicy``; ``use_sde`` must stay False.

""",
    )
