"""Construction-time checks of hyperparameters, with errors that say what was wrong and how to fix it."""

import numbers

from gymnasium import spaces

SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def check_positive(name: str, value: float, hint: str = "") -> None:
    """
    :param name: the keyword's name
    :param value: its value
    :param hint: a suggestion appended to the message
    :raises ValueError: unless ``value > 0``
    """
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.{hint}")


def check_int_at_least(name: str, value: int, minimum: int, hint: str = "") -> None:
    """
    :param name: the keyword's name
    :param value: its value
    :param minimum: the smallest allowed value
    :param hint: a suggestion appended to the message
    :raises ValueError: unless ``value`` is an integer ``>= minimum``
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.{hint}")


def check_in_range(
    name: str,
    value: float,
    low: float,
    high: float,
    low_inclusive: bool,
    high_inclusive: bool,
    hint: str = "",
) -> None:
    """
    :param name: the keyword's name
    :param value: its value
    :param low: lower bound
    :param high: upper bound
    :param low_inclusive: whether ``low`` itself is allowed
    :param high_inclusive: whether ``high`` itself is allowed
    :param hint: a suggestion appended to the message
    :raises ValueError: when ``value`` is outside the interval
    """
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (above and below):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.{hint}")


def check_action_space(action_space: spaces.Space, algorithm: str) -> None:
    """
    :param action_space: the environment's action space
    :param algorithm: the algorithm's name, for the message
    :raises ValueError: for action spaces the algorithm cannot handle
    """
    if not isinstance(action_space, SUPPORTED_ACTION_SPACES):
        names = ", ".join(s.__name__ for s in SUPPORTED_ACTION_SPACES)
        raise ValueError(
            f"{algorithm} does not support the action space {action_space!r}: supported are {names}. "
            "Wrap the environment so that it exposes one of these (e.g. flatten a Dict/Tuple action space)."
        )


def check_batch_size(batch_size: int, n_steps: int, n_envs: int) -> None:
    """
    :param batch_size: the critic's mini-batch size
    :param n_steps: steps per environment per rollout
    :param n_envs: number of environments
    :raises ValueError: when a mini-batch would be larger than the rollout
    """
    rollout_size = n_steps * n_envs
    if batch_size > rollout_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the rollout (n_steps * n_envs = {n_steps} * {n_envs} = "
            f"{rollout_size}). Use batch_size <= {rollout_size} or collect more steps per rollout."
        )


def check_keywords(
    learning_rate: object,
    n_steps: int,
    batch_size: int,
    gamma: float,
    gae_lambda: float,
    cg_max_steps: int,
    cg_damping: float,
    n_critic_updates: int,
    target_kl: float,
    sub_sampling_factor: int,
    fisher_sample_fraction: float,
) -> None:
    """
    The construction-time checks of the keywords every natural-gradient algorithm shares (see its docstring).

    :raises ValueError: naming the first bad keyword, its value and a typical value
    """
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
