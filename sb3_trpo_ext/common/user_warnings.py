"""Warnings that point at the user's line, however deep inside this package (or SB3) they are raised."""

import sys
import warnings
from pathlib import Path

import stable_baselines3

_INTERNAL_FOLDERS = (
    str(Path(__file__).resolve().parents[1]),  # sb3_trpo_ext
    str(Path(stable_baselines3.__file__).resolve().parent),  # SB3's load() and learn() call into our code
)


def _is_internal(filename: str) -> bool:
    try:
        path = str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return False
    return path.startswith(_INTERNAL_FOLDERS)


def user_stacklevel() -> int:
    """
    :return: the ``stacklevel`` that makes ``warnings.warn``, called by the caller of this function, point at the
        first frame outside ``sb3_trpo_ext`` and ``stable_baselines3`` (the user's call, e.g. ``TRPO(...)``)
    """
    level = 2  # the caller's caller, as warnings.warn counts from the caller
    frame = sys._getframe(2)
    while frame.f_back is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


def warn_at_user_call(message: str, category: type[Warning] = UserWarning) -> None:
    """
    ``warnings.warn(message, category)`` attributed to the user's line (see :func:`user_stacklevel`), not to ours.

    :param message: the warning's text
    :param category: the warning's class
    """
    warnings.warn(message, category, stacklevel=user_stacklevel())
