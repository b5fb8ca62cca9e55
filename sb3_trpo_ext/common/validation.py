"""Construction-time checks of hyperparameters, with errors that say what was wrong and how to fix it."""

import difflib
import numbers
import typing
from collections.abc import Iterable

from gymnasium import spaces

from sb3_trpo_ext.common.user_warnings import warn_at_user_call

SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def check_number(name: str, value: object, expected: str = "a number") -> None:
    """
    :param name: the keyword's name
    :param value: its value
    :param expected: what the keyword takes, for the message (``"a number"``, ``"an integer"``, ...)
    :raises TypeError: unless ``value`` is a real number (not a bool), naming the keyword, the value and its type
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return
    hint = ""
    if isinstance(value, str) and _parses_as_number(value):
        hint = f" Pass the number itself ({name}={value.strip()}), not a string."
    raise TypeError(f"{name} must be {expected}, got {value!r} of type {type(value).__name__}.{hint}")


def check_integer(name: str, value: object, expected: str = "an integer") -> None:
    """
    :param name: the keyword's name
    :param value: its value
    :param expected: what the keyword takes, for the message
    :raises TypeError: unless ``value`` is an integer (not a bool), naming the keyword, the value and its type
    """
    check_number(name, value, expected)
    if not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {value!r} of type {type(value).__name__}.")


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_positive(name: str, value: float, hint: str = "") -> None:
    """
    :param name: the keyword's name
    :param value: its value
    :param hint: a suggestion appended to the message
    :raises TypeError: unless ``value`` is a number
    :raises ValueError: unless ``value > 0``
    """
    check_number(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.{hint}")


def check_int_at_least(name: str, value: int, minimum: int, hint: str = "") -> None:
    """
    :param name: the keyword's name
    :param value: its value
    :param minimum: the smallest allowed value
    :param hint: a suggestion appended to the message
    :raises TypeError: unless ``value`` is a number
    :raises ValueError: unless ``value`` is an integer ``>= minimum``
    """
    check_number(name, value, "an integer")
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
    :raises TypeError: unless ``value`` is a number
    :raises ValueError: when ``value`` is outside the interval
    """
    check_number(name, value)
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


def check_rollout_size(batch_size: int, n_steps: int, n_envs: int, normalize_advantage: bool) -> None:
    """
    The checks sb3-contrib's TRPO makes of the rollout size, with the same outcome (an error where it raises, a warning
    where it warns), and a message that says what to change.

    :param batch_size: the critic's mini-batch size
    :param n_steps: steps per environment per rollout
    :param n_envs: number of environments
    :param normalize_advantage: whether the advantages are normalized (needs two samples or more)
    :raises AssertionError: for a rollout of one sample with ``normalize_advantage`` (the type sb3-contrib raises)
    :warns UserWarning: when the rollout is not a multiple of ``batch_size``: the critic's last mini-batch of an epoch
        is then smaller (the whole rollout when ``batch_size`` is larger than it)
    """
    rollout_size = n_steps * n_envs
    if normalize_advantage and rollout_size < 2:
        raise AssertionError(
            f"The rollout has n_steps * n_envs = {n_steps} * {n_envs} = {rollout_size} sample: normalizing the advantages "
            "would divide by a zero standard deviation (NaN). Collect at least 2 samples per rollout (n_steps >= 2), "
            "or pass normalize_advantage=False."
        )
    if rollout_size % batch_size > 0:
        size = rollout_size % batch_size
        warn_at_user_call(
            f"batch_size={batch_size} does not divide the rollout (n_steps * n_envs = {n_steps} * {n_envs} = "
            f"{rollout_size}): each critic epoch ends with a truncated mini-batch of {size} sample(s)"
            + (" (here the whole rollout, as batch_size is larger)" if batch_size > rollout_size else "")
            + f". Use a batch_size that divides {rollout_size} to avoid it."
        )


def check_keywords(
    learning_rate: object,
    n_steps: int,
    batch_size: int,
    gamma: float,
    gae_lambda: float,
    cg_max_steps: int,
    cg_damping: float | None,
    n_critic_updates: int,
    target_kl: float | None,
    sub_sampling_factor: int,
    fisher_sample_fraction: float,
) -> None:
    """
    The construction-time checks of the keywords every natural-gradient algorithm shares (see its docstring).

    :raises TypeError: naming the first keyword whose value is not a number (or, for ``learning_rate``, a schedule),
        its value and the expected type
    :raises ValueError: naming the first bad keyword, its value and a typical value
    """
    check_number("target_kl", 0.01 if target_kl is None else target_kl, "a number or None")
    check_number("cg_damping", 0.1 if cg_damping is None else cg_damping, "a number or None")
    if target_kl is not None:
        check_positive("target_kl", target_kl, " The paper's trust region is target_kl=0.01; None: 0.01 per action dimension.")
    check_int_at_least("cg_max_steps", cg_max_steps, 1, " The paper uses 10 conjugate-gradient steps.")
    if cg_damping is not None:
        check_in_range("cg_damping", cg_damping, 0.0, float("inf"), True, False, " Typical values: 0.1 or 1e-3.")
    check_int_at_least("n_steps", n_steps, 1)
    check_int_at_least("batch_size", batch_size, 1)
    check_int_at_least("n_critic_updates", n_critic_updates, 0)
    check_int_at_least("sub_sampling_factor", sub_sampling_factor, 1, " 1 uses every sample.")
    check_in_range("fisher_sample_fraction", fisher_sample_fraction, 0.0, 1.0, False, True, " The paper uses 0.1.")
    check_in_range("gamma", gamma, 0.0, 1.0, True, True)
    check_in_range("gae_lambda", gae_lambda, 0.0, 1.0, True, True)
    if not callable(learning_rate):
        check_number("learning_rate", learning_rate, "a number or a schedule (a callable of the remaining progress)")
        check_positive("learning_rate", typing.cast(float, learning_rate))


def check_sb3_keywords(sde_sample_freq: int, stats_window_size: int, verbose: int, seed: int | None) -> None:
    """
    Type checks of the integer keywords that SB3's base classes take unchecked (a string there fails later, with a
    bare ``TypeError: '>' not supported ...``).

    :raises TypeError: naming the first keyword that is not an integer, its value and its type
    """
    check_integer("sde_sample_freq", sde_sample_freq)
    check_integer("stats_window_size", stats_window_size)
    check_integer("verbose", verbose, "an integer (0, 1 or 2)")
    if seed is not None:
        check_integer("seed", seed, "an integer or None")


RECURRENT_HINT = (
    " For an LSTM policy use sb3_trpo_ext.RecurrentTRPO('MlpLstmPolicy', env) or RecurrentNaturalPG (sb3-contrib's "
    "recurrent policies; the vine method has no recurrent form)."
)


def unknown_policy_error(name: str, aliases: Iterable[str], algorithm: str) -> ValueError:
    """
    The error for a policy name that is not one of ``aliases`` (the type SB3's ``_get_policy_from_name`` raises).

    :param name: the policy name given
    :param aliases: the valid names
    :param algorithm: the algorithm's name, for the message
    :return: a ``ValueError`` with SB3's message (``Policy NAME unknown``) followed by the valid names, the closest one
        and, for recurrent names, where to go
    """
    valid = sorted(aliases)
    by_lower = {alias.lower(): alias for alias in valid}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    suggestion = f" Did you mean {by_lower[close[0]]!r}?" if close else ""
    recurrent = RECURRENT_HINT if any(word in name.lower() for word in ("lstm", "gru", "recurrent")) else ""
    return ValueError(
        f"Policy {name} unknown: the policy names of {algorithm} are {', '.join(map(repr, valid))} (or pass a "
        f"policy class).{suggestion}{recurrent}"
    )
