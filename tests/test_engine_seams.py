"""
How many of our modules one update passes through (issue 28, "One update, one read").

Each test traces one iteration with ``sys.setprofile`` after a warm-up iteration, on Pendulum-v1 with the backends
``choose_backends`` picks, and counts the distinct modules of ``sb3_trpo_ext`` whose functions are called. The bounds
are the issue's targets: a reader follows one update through few files, and no file is re-read for a fact the model
decided at setup (the MLP layers: ``mlp_layers`` is called only when the model is built). Run with ``-s`` to see the
counts.
"""

import sys
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from stable_baselines3.common.callbacks import BaseCallback

from sb3_trpo_ext import TRPO, VineTRPO
from sb3_trpo_ext.common.base import NaturalGradientAlgorithm

PACKAGE = "sb3_trpo_ext"
LAYER_READER = "sb3_trpo_ext.common.fast_mlp:mlp_layers"


def traced_calls(run: Callable[[], Any]) -> Counter[str]:
    """
    :param run: what to trace
    :return: the calls of our package's functions during ``run``, as ``module:function`` with their counts
    """
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        module = frame.f_globals.get("__name__", "")
        if event == "call" and (module == PACKAGE or module.startswith(PACKAGE + ".")):
            calls[f"{module}:{frame.f_code.co_name}"] += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def modules_of(calls: Counter[str]) -> list[str]:
    """:return: the distinct modules of ``calls``, sorted"""
    return sorted({name.split(":")[0] for name in calls})


def warmed_up_iteration(model: NaturalGradientAlgorithm) -> tuple[Callable[[], None], Callable[[], None]]:
    """
    :param model: a model built on Pendulum-v1
    :return: one iteration (``collect_rollouts`` then ``train``) and ``train`` alone, after one warm-up iteration
    """
    _, callback = model._setup_learn(10**9, None, True, "seams", False)
    callback.on_training_start(locals(), globals())

    def iteration(hook: BaseCallback = callback) -> None:
        model.collect_rollouts(model.env, hook, model.rollout_buffer, model.n_steps)
        model.train()

    iteration()
    return iteration, model.train


def report(name: str, calls: Counter[str]) -> None:
    modules = modules_of(calls)
    print(f"\n{name}: {len(modules)} modules, {len(calls)} functions, {calls[LAYER_READER]} calls of mlp_layers")
    for module in modules:
        print(f"  {module}")


@pytest.fixture(scope="module")
def trpo_traces() -> tuple[Counter[str], Counter[str]]:
    model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=256, seed=0, device="cpu")
    iteration, train = warmed_up_iteration(model)
    return traced_calls(iteration), traced_calls(train)


def test_one_trpo_train_touches_at_most_seven_of_our_modules(trpo_traces: tuple[Counter[str], Counter[str]]) -> None:
    _, train = trpo_traces
    report("TRPO train()", train)
    assert len(modules_of(train)) <= 7


def test_one_trpo_iteration_touches_at_most_nine_of_our_modules(trpo_traces: tuple[Counter[str], Counter[str]]) -> None:
    iteration, _ = trpo_traces
    report("TRPO iteration", iteration)
    assert len(modules_of(iteration)) <= 9
    assert iteration[LAYER_READER] == 0


def test_one_vine_iteration_touches_at_most_sixteen_of_our_modules() -> None:
    model = VineTRPO("MlpPolicy", "Pendulum-v1", n_steps=64, seed=0, device="cpu")
    iteration, _ = warmed_up_iteration(model)
    calls = traced_calls(iteration)
    report("VineTRPO iteration", calls)
    assert len(modules_of(calls)) <= 16
    assert calls[LAYER_READER] == 0
