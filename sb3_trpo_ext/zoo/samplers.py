"""
Optuna samplers for ``-optimize`` and the converters that turn a stored trial back into hyperparameters.

rl-zoo3 calls ``sampler(trial, n_actions, n_envs, additional_args)`` and passes what it returns to the constructor;
``--trial-id`` later loads ``trial.params`` from the study and passes them through the converter. So each sampler
suggests raw values (``one_minus_gamma``, ``n_steps_pow``, ``net_arch`` name, ...) and returns
``convert(trial.params)``: the two paths give the same hyperparameters.

Ranges:

- ``n_steps`` from 256 to 4096 per environment: the trust region needs a sizeable batch; ``batch_size`` (the critic's
  mini-batch) at most 256, so it never exceeds the rollout.
- ``target_kl`` is the whole-distribution KL (sb3-contrib's is averaged over action dimensions): from 0.002 up to
  0.05 per action dimension (the paper's 0.01 lies inside for every task).
- natural PG: ``step_mode`` ``"kl"`` (KL-normalized step, size ``target_kl``) or ``"constant"`` (``step_size`` in
  [1e-3, 1]).
- vine: ``n_rollout_states`` N, ``n_actions_per_state`` K, ``rollout_length`` m and, on discrete action spaces,
  ``action_sampling`` q (``"uniform"`` needs one; Box spaces keep q = pi); the branch budget ``N * K * m`` stays below
  80k simulator steps per iteration.
"""

from typing import Any

import optuna
from torch import nn

NET_ARCHS: dict[str, dict[str, list[int]]] = {
    "paper": {"pi": [50], "vf": [64, 64]},  # the paper's one hidden layer of 50 units (Table 2, Hopper/Walker)
    "small": {"pi": [64, 64], "vf": [64, 64]},  # SB3's default
    "medium": {"pi": [256, 256], "vf": [256, 256]},
}
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def convert_trpo_params(params: dict[str, Any]) -> dict[str, Any]:
    """
    Trial parameters -> TRPO hyperparameters.

    :param params: ``trial.params`` of a TRPO-style sampler
    :return: constructor keywords
    """
    hyperparams = dict(params)
    hyperparams["n_steps"] = 2 ** hyperparams.pop("n_steps_pow")
    hyperparams["gamma"] = 1.0 - hyperparams.pop("one_minus_gamma")
    hyperparams["gae_lambda"] = 1.0 - hyperparams.pop("one_minus_gae_lambda")
    hyperparams["policy_kwargs"] = {
        "net_arch": NET_ARCHS[hyperparams.pop("net_arch")],
        "activation_fn": ACTIVATIONS[hyperparams.pop("activation_fn")],
    }
    return hyperparams


def convert_natural_pg_params(params: dict[str, Any]) -> dict[str, Any]:
    """
    Trial parameters -> NaturalPG hyperparameters (``step_size`` only exists for ``step_mode="constant"``).

    :param params: ``trial.params`` of :func:`sample_natural_pg_params`
    :return: constructor keywords
    """
    return convert_trpo_params(params)


def convert_vine_trpo_params(params: dict[str, Any]) -> dict[str, Any]:
    """
    Trial parameters -> VineTRPO hyperparameters.

    :param params: ``trial.params`` of :func:`sample_vine_trpo_params`
    :return: constructor keywords
    """
    hyperparams = convert_trpo_params(params)
    hyperparams["n_rollout_states"] = 2 ** hyperparams.pop("n_rollout_states_pow")
    return hyperparams


def _suggest_trpo(trial: optuna.Trial, n_actions: int) -> None:
    trial.suggest_int("n_steps_pow", 8, 12)
    trial.suggest_categorical("batch_size", [64, 128, 256])
    trial.suggest_float("one_minus_gamma", 1e-4, 0.03, log=True)
    trial.suggest_float("one_minus_gae_lambda", 1e-3, 0.1, log=True)
    trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True)
    trial.suggest_int("n_critic_updates", 5, 30)
    trial.suggest_int("cg_max_steps", 5, 25)
    # whole-distribution KL: 0.002 .. 0.05 per action dimension (n_actions is 0 for discrete spaces)
    trial.suggest_float("target_kl", 0.002, 0.05 * max(1, n_actions), log=True)
    trial.suggest_categorical("net_arch", list(NET_ARCHS))
    trial.suggest_categorical("activation_fn", list(ACTIVATIONS))


def _record_true_values(trial: optuna.Trial, hyperparams: dict[str, Any]) -> None:
    for key in ("n_steps", "gamma", "gae_lambda", "n_rollout_states"):
        if key in hyperparams:
            trial.set_user_attr(key, hyperparams[key])


def sample_trpo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for our TRPO (``trpo_ext``).

    :param trial: the Optuna trial
    :param n_actions: action dimension for Box spaces, 0 otherwise
    :param n_envs: number of environments
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: constructor keywords
    """
    _suggest_trpo(trial, n_actions)
    hyperparams = convert_trpo_params(trial.params)
    _record_true_values(trial, hyperparams)
    return hyperparams


def sample_natural_pg_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for NaturalPG (``natural_pg``): the TRPO ranges plus the step rule.

    :param trial: the Optuna trial
    :param n_actions: action dimension for Box spaces, 0 otherwise
    :param n_envs: number of environments
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: constructor keywords
    """
    _suggest_trpo(trial, n_actions)
    step_mode = trial.suggest_categorical("step_mode", ["kl", "constant"])
    if step_mode == "constant":
        trial.suggest_float("step_size", 1e-3, 1.0, log=True)
    hyperparams = convert_natural_pg_params(trial.params)
    _record_true_values(trial, hyperparams)
    return hyperparams


def sample_vine_trpo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for VineTRPO (``vine_trpo``): the TRPO ranges plus N, K, m and q of the vine.

    :param trial: the Optuna trial
    :param n_actions: action dimension for Box spaces, 0 otherwise
    :param n_envs: number of environments
    :param additional_args: rl-zoo3's extra arguments (unused)
    :return: constructor keywords
    """
    _suggest_trpo(trial, n_actions)
    trial.suggest_int("n_rollout_states_pow", 4, 7)  # N = 16 .. 128 states, never more than n_steps >= 256
    trial.suggest_int("n_actions_per_state", 2, 6)  # K
    trial.suggest_categorical("rollout_length", [10, 25, 50, 100])  # m
    if n_actions == 0:  # q: uniform is for discrete action spaces only (rl-zoo3 sets n_actions for Box spaces)
        trial.suggest_categorical("action_sampling", ["policy", "uniform"])
    hyperparams = convert_vine_trpo_params(trial.params)
    _record_true_values(trial, hyperparams)
    return hyperparams


SAMPLERS = {
    "trpo_ext": sample_trpo_params,
    "natural_pg": sample_natural_pg_params,
    "vine_trpo": sample_vine_trpo_params,
    # the recurrent classes take the same keywords (the LSTM's own go in policy_kwargs, as for ppo_lstm)
    "trpo_lstm": sample_trpo_params,
    "natural_pg_lstm": sample_natural_pg_params,
    "trpo_mask": sample_trpo_params,  # the maskable classes take TRPO's and NaturalPG's keywords
    "natural_pg_mask": sample_natural_pg_params,
}
CONVERTERS = {
    "trpo_ext": convert_trpo_params,
    "natural_pg": convert_natural_pg_params,
    "vine_trpo": convert_vine_trpo_params,
    "trpo_lstm": convert_trpo_params,
    "natural_pg_lstm": convert_natural_pg_params,
    "trpo_mask": convert_trpo_params,
    "natural_pg_mask": convert_natural_pg_params,
}
