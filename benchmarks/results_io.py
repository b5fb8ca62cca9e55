"""
What the benchmark tools share about their result files: one schema (:func:`write_result`, :func:`read_result`), the
machine, commit, versions and command a result names, and the generated sections of the README and the docs.

Every result file is one JSON object::

    {"schema": 1, "machine": ..., "date": ..., "git": {"commit": ..., "dirty": ..., "paths": [...]},
     "versions": {...}, "command": ..., "data": {...the tool's own...}}

written by :func:`write_result` (atomically: a reader never sees a partial file) and read by :func:`read_result`, which
also reads the files written before the schema (one flat object: its provenance keys are moved out of ``data``, see
:func:`upgrade`), so older result files are read as they are and never rewritten.

The docs' results page (``docs/misc/results.md``) carries every generated section; the README, a front page, only the
headline one (``defaults``). Writing a section with :func:`replace_readme_section` writes it into both where each has
its markers; ``python -m benchmarks results-io --docs`` copies every section the README has into the docs page.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS_RESULTS = os.path.join(ROOT, "docs", "misc", "results.md")
"""The docs' results page: every generated section, between its markers (the README has the headline one only)."""
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
    ``python -m benchmarks TOOL ARGS`` (a package's ``__main__.py`` as ``-m PACKAGE``).

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


# ---------------------------------------------------------------------------------------------------------------------
# Generated sections of the README and the docs


def _markers(markers: str) -> tuple[str, str]:
    return f"<!-- {markers}:start -->", f"<!-- {markers}:end -->"


def _section_bounds(content: str, markers: str) -> tuple[int, int] | None:
    """:return: where the text between the markers starts and ends in ``content`` (``None`` without the markers)"""
    start_marker, end_marker = _markers(markers)
    if start_marker not in content or end_marker not in content or content.index(start_marker) > content.index(end_marker):
        return None
    return content.index(start_marker) + len(start_marker), content.index(end_marker)


def _write_section(path: str, content: str, bounds: tuple[int, int], text: str) -> None:
    start, end = bounds
    with open(path, "w") as f:
        f.write(content[:start] + "\n" + text + "\n" + content[end:])


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def docs_text(text: str, docs: str = DOCS_RESULTS) -> str:
    """
    A README section as the docs page ``docs`` shows it. The README's links are relative to the repository root:
    images and links to files get the path relative to the page's folder (Sphinx copies the images into the built
    site and offers linked files as downloads), links to folders become their text (Sphinx cannot link a folder).

    :param text: markdown written for the README
    :param docs: the docs page it goes to
    :return: the same markdown for the docs page
    """
    prefix = os.path.relpath(ROOT, os.path.dirname(os.path.abspath(docs))).replace(os.sep, "/")

    def relink(match: re.Match[str]) -> str:
        bang, label, target = match.groups()
        if "://" in target or target.startswith(("#", "/", "mailto:")):
            return match.group(0)
        if bang or os.path.isfile(os.path.join(ROOT, target.split("#")[0])):
            return f"{bang}[{label}]({prefix}/{target})"
        return label

    return _LINK.sub(relink, text)


def replace_docs_section(text: str, markers: str, docs: str = DOCS_RESULTS) -> bool:
    """
    Replace what is between the markers in the docs page ``docs`` with ``text`` (README markdown, see
    :func:`docs_text`).

    :return: whether the page has the markers (a page without them is left as it was)
    """
    if not os.path.isfile(docs):
        return False
    with open(docs) as f:
        content = f.read()
    bounds = _section_bounds(content, markers)
    if bounds is None:
        return False
    _write_section(docs, content, bounds, docs_text(text, docs))
    return True


def _has_section(path: str | None, markers: str) -> bool:
    if path is None or not os.path.isfile(path):
        return False
    with open(path) as f:
        return _section_bounds(f.read(), markers) is not None


def replace_readme_section(text: str, markers: str, readme: str = README, docs: str | None = None) -> None:
    """
    Replace what is between ``<!-- MARKERS:start -->`` and ``<!-- MARKERS:end -->`` in ``readme`` with ``text``, and
    in the docs page ``docs`` (README markdown converted, see :func:`docs_text`) where it has the same markers.

    The README is a front page: most sections live on the docs' results page only. A README without the markers is
    left as it was when the docs page has them (the section goes there only).

    :param docs: the docs page; default: :data:`DOCS_RESULTS` for the repository's README, none for another file
    :raises SystemExit: when neither ``readme`` nor ``docs`` has the markers (both are left as they were)
    """
    start_marker, end_marker = _markers(markers)
    if docs is None and os.path.abspath(readme) == os.path.abspath(README):
        docs = DOCS_RESULTS
    with open(readme) as f:
        content = f.read()
    bounds = _section_bounds(content, markers)
    if bounds is None and not _has_section(docs, markers):
        where = f"{readme} nor {docs} has" if docs is not None else f"{readme} has no"
        raise SystemExit(
            f"{'neither ' if docs is not None else ''}{where} '{start_marker}' ... '{end_marker}' markers: "
            "add them where the text goes"
        )
    if bounds is not None:
        _write_section(readme, content, bounds, text)
    if docs is not None:
        # as sync_docs_results copies it: without the blank lines a script may leave around the section
        if replace_docs_section(text.strip("\n"), markers, docs):
            print(f"Updated {docs} ({markers})" + ("" if bounds is not None else f"; {readme} has no {markers} section"))
        else:
            print(f"note: {docs} has no {markers} markers; the docs do not show this section", file=sys.stderr)


def sync_docs_results(readme: str = README, docs: str = DOCS_RESULTS) -> list[str]:
    """
    Copy every marked section of ``readme`` into ``docs`` where ``docs`` has the same markers.

    :return: the names of the sections copied
    """
    with open(readme) as f:
        content = f.read()
    names = re.findall(r"<!-- ([\w.-]+):start -->", content)
    copied = []
    for name in names:
        bounds = _section_bounds(content, name)
        if bounds is not None and replace_docs_section(content[bounds[0] : bounds[1]].strip("\n"), name, docs):
            copied.append(name)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy the README's generated sections into the docs' results page.")
    parser.add_argument("--docs", action="store_true", help=f"copy every marked README section into {DOCS_RESULTS}")
    if parser.parse_args(argv).docs:
        print(f"Updated {DOCS_RESULTS}: {', '.join(sync_docs_results()) or 'no section (the page has no markers)'}")
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
