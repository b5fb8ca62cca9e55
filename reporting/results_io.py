"""
The result files of the benchmark tools: one schema (:func:`write_result`, :func:`read_result`) and the machine,
commit, versions and command a result names. The README's and the docs' generated sections: :mod:`reporting.sections`.

Every result file is one JSON object::

    {"schema": 1, "machine": ..., "date": ..., "git": {"commit": ..., "dirty": ..., "paths": [...]},
     "versions": {...}, "command": ..., "data": {...the tool's own...}}

written by :func:`write_result` (atomically: a reader never sees a partial file) and read by :func:`read_result`, which
also reads the files written before the schema (one flat object: its provenance keys are moved out of ``data``, see
:func:`upgrade`), so older result files are read as they are and never rewritten.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root: the commands a result records are relative to it."""
SCHEMA = 1
"""The version of the result files' layout (:func:`write_result`)."""
PROVENANCE = ("machine", "date", "git", "versions", "command")
"""The keys of a result beside ``schema`` and ``data``: where, when, from which code and by which command."""
PACKAGES = (
    "sb3-trpo-ext",
    "stable-baselines3",
    "sb3-contrib",
    "rl-zoo3",
    "torch",
    "gymnasium",
    "mujoco",
    "ale-py",
    "numpy",
    "ray",
)
"""The distributions whose versions a result records (those installed)."""

# ---------------------------------------------------------------------------------------------------------------------
# Provenance


def machine() -> str:
    """:return: the machine class: CPU model, core count, OS and architecture"""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def git_commit(paths: Sequence[str] = ()) -> dict[str, Any]:
    """
    :param paths: the paths whose uncommitted changes count (default: the whole tree)
    :return: ``{"commit": HEAD, "dirty": whether tracked files under ``paths`` differ from it, "paths": paths}``
        (commit and dirty ``None`` outside git)
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        status = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status), "paths": list(paths)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "paths": list(paths)}


def versions() -> dict[str, str]:
    """:return: the versions of Python and of the installed :data:`PACKAGES`, and the package's source version"""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    with open(os.path.join(ROOT, "sb3_trpo_ext", "version.txt")) as f:
        found["sb3_trpo_ext (source)"] = f.read().strip()
    return found


def now() -> str:
    """:return: the time in UTC, ISO 8601 to the second"""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line(argv: Sequence[str] | None = None) -> str:
    """
    The command that started this process as typed in the repository root: ``python benchmarks/NAME.py ARGS``,
    ``python -m vine_study ARGS`` (a package's ``__main__.py`` as ``-m PACKAGE``).

    :param argv: the process's arguments (default: ``sys.argv``)
    :return: the command line, quoted for a shell
    """
    script, *args = sys.argv if argv is None else argv
    path = os.path.abspath(script)
    if os.path.basename(path) == "__main__.py":
        head = ["-m", os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")]
    elif path.startswith(ROOT + os.sep):
        head = [os.path.relpath(path, ROOT)]
    else:
        head = [script]
    return shlex.join(["python", *head, *args])


# ---------------------------------------------------------------------------------------------------------------------
# Result files


def _write_json(path: str, content: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_result(path: str, data: dict[str, Any], command: str | None = None, git_paths: Sequence[str] = ()) -> dict[str, Any]:
    """
    Write one result file in the schema (atomically).

    :param path: the JSON file (its folder is created)
    :param data: the tool's own content
    :param command: the command that made the result (default: this process's, :func:`command_line`)
    :param git_paths: the paths whose uncommitted changes make the result's commit ``dirty`` (default: the whole tree)
    :return: what was written
    """
    result = {
        "schema": SCHEMA,
        "machine": machine(),
        "date": now(),
        "git": git_commit(git_paths),
        "versions": versions(),
        "command": command_line() if command is None else command,
        "data": data,
    }
    _write_json(path, result)
    return result


def upgrade(found: dict[str, Any]) -> dict[str, Any]:
    """
    A result as the schema has it. A file written before the schema is one flat object: its ``machine``, ``date``,
    ``git``, ``versions`` and ``command`` become the result's (``None`` where it has none, values as recorded: older
    files name the machine as a dict or the commit as a ``git describe`` string), everything else its ``data``, with
    two moves: a matrix cell's ``runner_command`` is the command that wrote it (its ``command``, the cell's training
    command, stays in ``data``), and a ``torch`` version string goes into ``versions``.

    :param found: the file's JSON object
    :return: ``{"schema", "machine", "date", "git", "versions", "command", "data"}``
    :raises ValueError: for a schema this code does not know
    """
    if "schema" in found:
        if found["schema"] != SCHEMA:
            raise ValueError(f"result schema {found['schema']!r}: this code reads schema {SCHEMA} and the flat files before")
        return found
    data = dict(found)
    provenance = {key: data.pop(key, None) for key in ("machine", "date", "git", "versions")}
    provenance["command"] = data.pop("runner_command") if "runner_command" in data else data.pop("command", None)
    if provenance["versions"] is None and isinstance(data.get("torch"), str):
        provenance["versions"] = {"torch": data.pop("torch")}
    return {"schema": SCHEMA, **provenance, "data": data}


def read_result(path: str) -> dict[str, Any]:
    """
    :param path: a result file, in the schema or written before it
    :return: the result in the schema (:func:`upgrade`); the file is left as it is
    """
    with open(path) as f:
        return upgrade(json.load(f))
