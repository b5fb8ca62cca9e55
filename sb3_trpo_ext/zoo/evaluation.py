"""
rl-zoo3's evaluations for ``vine_trpo``, whose callbacks see trunk steps only while ``-n`` counts trunk and branch
steps.

- ``-optimize``: rl-zoo3 evaluates each trial every ``n_timesteps / n_evaluations / n_envs`` callback calls, a
  schedule in *counted* steps. For the vine this would come after the last trunk step (so the trial never scores,
  ``-inf``): :class:`TrialEvalCallback` scales it by the trunk's share of an iteration, as ``benchmarks/matrix.py``
  scales the vine's ``--eval-freq``, with at most one evaluation per iteration.
- plain training: ``--eval-freq`` counts callback (trunk) steps, as documented (and as the benchmarks pass it);
  :func:`warn_if_never_evaluated` warns when a run's trunks cannot reach it.
"""

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import rl_zoo3.callbacks
import rl_zoo3.exp_manager
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from sb3_trpo_ext.common.user_warnings import warn_at_user_call
from sb3_trpo_ext.zoo.registration import vine_class


def as_vine(model: BaseAlgorithm) -> Any:
    """:return: ``model`` when it is a ``VineTRPO`` (typed loosely: the class is found at run time), else ``None``"""
    return model if isinstance(model, vine_class()) else None


def calls_for_counted_steps(model: BaseAlgorithm, calls: int) -> int:
    """
    The callback frequency that evaluates ``model`` about as often, in counted steps, as ``calls`` would if every
    counted step were a callback call.

    :param model: the model
    :param calls: callback calls between evaluations (rl-zoo3's, counted steps divided by ``n_envs``)
    :return: ``calls`` for models whose callbacks see every counted step; for ``VineTRPO``, ``calls`` times the
        trunk's share of an iteration's simulator steps (``n_steps * n_envs`` of ``n_steps * n_envs + N * K * m``),
        and at least one trunk (``n_steps`` calls: the policy changes once per iteration)
    """
    vine = as_vine(model)
    if vine is None or calls <= 0:
        return calls
    trunk, _, most_branch_steps = vine.iteration_steps()
    return max(round(calls * trunk / (trunk + most_branch_steps)), vine.n_steps)


class TrialEvalCallback(rl_zoo3.callbacks.TrialEvalCallback):
    """rl-zoo3's trial evaluation, scheduled in counted steps for ``VineTRPO`` (:func:`calls_for_counted_steps`)."""

    def _init_callback(self) -> None:
        self.eval_freq = calls_for_counted_steps(self.model, self.eval_freq)
        super()._init_callback()


@contextlib.contextmanager
def trial_evaluations_in_counted_steps() -> Iterator[None]:
    """
    While open, rl-zoo3's ``objective`` builds our :class:`TrialEvalCallback` (it looks the class up in its module
    at each trial; the same for every algorithm but the vine). Open it around the whole ``study.optimize``, which may
    run trials in threads.
    """
    original = rl_zoo3.exp_manager.TrialEvalCallback
    rl_zoo3.exp_manager.TrialEvalCallback = TrialEvalCallback  # type: ignore[misc]
    try:
        yield
    finally:
        rl_zoo3.exp_manager.TrialEvalCallback = original  # type: ignore[misc]


def most_callback_calls(model: BaseAlgorithm, n_timesteps: int) -> int | None:
    """
    :param model: the model
    :param n_timesteps: the budget of ``learn``
    :return: for ``VineTRPO``, the most callback calls ``learn(n_timesteps)`` can make (its trunks, when every
        branch ends at its first step); ``None`` for other models
    """
    vine = as_vine(model)
    if vine is None:
        return None
    trunk, least_branch_steps, _ = vine.iteration_steps()
    return math.ceil(n_timesteps / (trunk + least_branch_steps)) * vine.n_steps


def warn_if_never_evaluated(model: BaseAlgorithm, callbacks: list[BaseCallback], n_timesteps: int) -> None:
    """
    :param model: the model about to learn
    :param callbacks: rl-zoo3's callbacks of the run
    :param n_timesteps: the budget (``-n``)
    :warns UserWarning: for ``VineTRPO``, when ``--eval-freq`` (in trunk steps) is beyond every trunk of the run
    """
    most = most_callback_calls(model, n_timesteps)
    evaluations = [callback for callback in callbacks if isinstance(callback, EvalCallback) and callback.eval_freq > 0]
    if most is None or not evaluations or min(callback.eval_freq for callback in evaluations) <= most:
        return
    eval_freq = min(callback.eval_freq for callback in evaluations)
    trunk, _, most_branch_steps = as_vine(model).iteration_steps()
    share = trunk / (trunk + most_branch_steps)
    warn_at_user_call(
        f"No evaluation will run: for vine_trpo, --eval-freq counts callback (trunk) steps, and this run of "
        f"{n_timesteps:,} simulator steps makes at most {most:,} callback calls (a trunk is {trunk:,} of up to "
        f"{trunk + most_branch_steps:,} simulator steps of an iteration), fewer than the {eval_freq:,} between "
        f"evaluations (--eval-freq / n_envs). For an evaluation about every F simulator steps, pass --eval-freq "
        f"F x {share:.3f}."
    )
