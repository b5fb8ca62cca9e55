"""
The generated sections of the README and the docs: the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
markers, written by the report tools (their ``--readme``) and never typed by hand.

The docs' results page (``docs/misc/results.md``) carries every generated section; the README, a front page, only the
headline one (``defaults``). Writing a section with :func:`replace_readme_section` writes it into both where each has
its markers; ``python -m reporting sections --docs`` copies every section the README has into the docs page.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

if not __package__:  # run as a file, python reporting/sections.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT

README = os.path.join(ROOT, "README.md")
DOCS_RESULTS = os.path.join(ROOT, "docs", "misc", "results.md")
"""The docs' results page: every generated section, between its markers (the README has the headline one only)."""


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
