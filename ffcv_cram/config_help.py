"""--help as plain text over the declared sections: no tables, no terminal escape codes (it is
read in pipes, files and logs as often as on a terminal), and only the keys the script accepts."""
from __future__ import annotations

import textwrap

from fastargs.validation import Float, Int, OneOf, Str

WIDTH = 100


def constraint(checker) -> str:
    """What a value must be, in words (fastargs' OneOf lists its set in no fixed order)."""
    if isinstance(checker, OneOf):
        return "one of " + " | ".join(sorted(str(v) for v in checker.possible_values))
    if isinstance(checker, Str):
        return "text"
    if isinstance(checker, Int):
        return "an integer"
    if isinstance(checker, Float):
        return "a number"
    return checker.help()


def _default(param) -> str:
    if param.required:
        return "required"
    if param.default is None:
        return "optional"
    if param.default == "":
        return "default ''"
    return f"default {int(param.default) if isinstance(param.default, bool) else param.default}"


def help_text(prog: str, description: str, config, closed_sections=(), footer: str = "") -> str:
    lines = [f"usage: {prog} [--config-file FILE]... [--section.key=VALUE]...", "",
             description, "",
             *textwrap.wrap("Each key is given as --section.key=VALUE (or --section.key VALUE) or "
                            "in a YAML or JSON file passed with --config-file (repeatable); the "
                            "command line wins over files, a later file over an earlier one.",
                            WIDTH)]
    for ns, paths in config.sections_to_entries.items():
        if ns[0] in closed_sections:
            continue
        lines += ["", f"{'.'.join(ns)}: {config.sections[ns].desc}"]
        for path in paths:
            param = config.entries[path]
            lines.append(f"  --{'.'.join(path)}  ({constraint(param.checker)}; "
                         f"{_default(param)})")
            lines += textwrap.wrap(param.desc, WIDTH, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
    if footer:
        lines += ["", *textwrap.wrap(footer, WIDTH)]
    return "\n".join(lines) + "\n"
