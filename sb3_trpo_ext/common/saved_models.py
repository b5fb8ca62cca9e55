"""
Which of our algorithms saved a zip, read from the keys of its ``data`` (no tensor is loaded), so that ``load`` can
refuse a zip saved by another of our classes instead of silently training it with that class's defaults.
"""

import io
import json
import pathlib
import zipfile
from typing import Any

from stable_baselines3.common.save_util import open_path

ALGORITHM_KEYS: tuple[tuple[str, str], ...] = (
    ("VineTRPO", "n_rollout_states"),
    ("NaturalPG", "step_mode"),
    ("TRPO", "line_search_shrinking_factor"),
)
"""Our algorithms, each with a keyword only it (and its subclasses) has, in the order they are told apart: a zip's
``data`` holds every constructor keyword (sb3-contrib's TRPO zips have ``line_search_shrinking_factor`` too, and
load with our ``TRPO``)."""


def algorithm_of_keys(keys: Any) -> str | None:
    """
    :param keys: the keys of a zip's ``data``, or the constructor keywords of a class
    :return: the name of the algorithm they belong to (``"TRPO"``, ``"NaturalPG"`` or ``"VineTRPO"``), or ``None``
    """
    return next((name for name, key in ALGORITHM_KEYS if key in keys), None)


def saved_data_keys(path: str | pathlib.Path | io.BufferedIOBase) -> set[str] | None:
    """
    :param path: a zip as SB3's ``load`` takes it (a path, with or without ``.zip``, or an open file)
    :return: the keys of its ``data``, or ``None`` when it cannot be read (SB3's ``load`` then says why)
    """
    try:
        file = open_path(path, "r", verbose=0, suffix="zip")
    except (OSError, ValueError, TypeError):
        return None
    position = None if isinstance(path, (str, pathlib.Path)) else file.tell()
    try:
        with zipfile.ZipFile(file) as archive:
            return set(json.loads(archive.read("data"))) if "data" in archive.namelist() else None
    except (zipfile.BadZipFile, ValueError):
        return None
    finally:
        if position is None:
            file.close()
        else:
            file.seek(position)


def check_saved_algorithm(path: str | pathlib.Path | io.BufferedIOBase, cls: type, keywords: Any) -> None:
    """
    :param path: the zip given to ``cls.load``
    :param cls: the class whose ``load`` was called
    :param keywords: its constructor keywords
    :raises ValueError: when the zip was saved by another of our algorithms, naming both and the fix
    """
    keys = saved_data_keys(path)
    saved, loading = (None if keys is None else algorithm_of_keys(keys)), algorithm_of_keys(keywords)
    if saved is None or loading is None or saved == loading:
        return
    name = path if isinstance(path, (str, pathlib.Path)) else getattr(path, "name", "the zip")
    raise ValueError(
        f"{name} was saved by {saved}, but {cls.__name__}.load was called: the model would go on as a {cls.__name__}, "
        f"with default settings for everything {saved} does not save. Load it with {saved}.load(path) (from "
        f"sb3_trpo_ext import {saved}). To start a {cls.__name__} from its policy instead, build the {cls.__name__} "
        f"and copy the weights: model.policy.load_state_dict({saved}.load(path).policy.state_dict())."
    )
