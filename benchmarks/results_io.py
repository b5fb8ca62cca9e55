"""
What the benchmark scripts share about their result files: the machine and commit a run names, atomic JSON writes,
the README sections written between markers, and loading a sibling script.

The scripts run as ``python benchmarks/NAME.py`` (``benchmarks/`` is not a package); each puts this folder on
``sys.path`` and imports this module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


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
    :return: ``{"commit": HEAD, "dirty": whether tracked files under ``paths`` differ from it}`` (``None`` outside git)
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        status = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a partial file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_readme_section(text: str, markers: str, readme: str = README) -> None:
    """
    Replace what is between ``<!-- MARKERS:start -->`` and ``<!-- MARKERS:end -->`` in ``readme`` with ``text``.

    :raises SystemExit: when the markers are missing (the README is left as it was)
    """
    start_marker, end_marker = f"<!-- {markers}:start -->", f"<!-- {markers}:end -->"
    with open(readme) as f:
        content = f.read()
    if start_marker not in content or end_marker not in content or content.index(start_marker) > content.index(end_marker):
        raise SystemExit(f"{readme} has no '{start_marker}' ... '{end_marker}' markers: add them where the text goes")
    start, end = content.index(start_marker) + len(start_marker), content.index(end_marker)
    with open(readme, "w") as f:
        f.write(content[:start] + "\n" + text + "\n" + content[end:])


def load_sibling(name: str) -> Any:
    """Load ``benchmarks/{name}.py`` as module ``benchmarks_{name}`` (once)."""
    module_name = f"benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module
