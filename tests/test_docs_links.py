"""The README and docs/ stay true to the repository: every relative link reaches an existing file
(and heading), and every `--section.key` option they name is declared by a command-line script.
Pure text and `ast` parsing: no torch, well under a second."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")
OPTION = re.compile(r"(?<![\w-])--([a-z_]+)\.([a-z_0-9]+)")
PLACEHOLDER_SECTIONS = {"section"}  # prose such as `--section.key=value`


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in _prose_lines(page.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    return [target for line in _prose_lines(page.read_text())
            for target in LINK.findall(CODE_SPAN.sub("", line))]


def _declared_options() -> set[tuple[str, str]]:
    """(section, key) of every `Section("section", ...).params(key=Param(...))` in the scripts
    and the package, of the shared data options (`loading_params`), and of every "section.key"
    string of the alias table (ffcv-imagenet's key names)."""
    from ffcv_cram.data.loading_params import loading_params
    declared = {("data", key) for use in ("training", "evaluation") for key in loading_params(use)}
    for source in [*ROOT.glob("*.py"), *(ROOT / "ffcv_cram").rglob("*.py")]:
        aliases = source.name == "config_aliases.py"
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if aliases and isinstance(node, ast.Constant) and isinstance(node.value, str):
                dotted = re.fullmatch(r"([a-z_]+)\.([a-z_0-9]+)", node.value)
                if dotted:
                    declared.add(dotted.groups())
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "params" and isinstance(node.func.value, ast.Call)
                    and getattr(node.func.value.func, "id", None) == "Section"
                    and node.func.value.args
                    and isinstance(node.func.value.args[0], ast.Constant)):
                section = node.func.value.args[0].value
                declared.update((section, kw.arg) for kw in node.keywords if kw.arg)
    return declared


def test_the_pages_exist():
    names = {page.name for page in PAGES}
    assert "README.md" in names and len(PAGES) > 1, "docs/*.md is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_slug_follows_github():
    assert _slug("Decoding JPEGs on the GPU (`--data.decode`)") == \
        "decoding-jpegs-on-the-gpu---datadecode"
    assert _slug("A fixed, class-balanced hold-out") == "a-fixed-class-balanced-hold-out"


def test_named_options_are_declared():
    declared = _declared_options()
    assert ("training", "optimizer") in declared and ("cfg", "write_path") in declared
    unknown = sorted({f"{page.relative_to(ROOT)}: --{section}.{key}"
                      for page in PAGES
                      for section, key in OPTION.findall(page.read_text())
                      if section not in PLACEHOLDER_SECTIONS and (section, key) not in declared})
    assert not unknown, "options no script declares:\n" + "\n".join(unknown)
