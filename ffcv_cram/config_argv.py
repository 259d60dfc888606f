"""Split a command line into config files, --section.key values and the mistakes in it.

Our own scanner instead of argparse: argparse stops at the first unknown argument and cannot
suggest the key that was meant; here every problem is collected and reported together.
"""
from __future__ import annotations

from dataclasses import dataclass, field

HELP_FLAGS = ("-h", "--help")
CONFIG_FILE_FLAGS = ("--config-file", "-C")


@dataclass
class CommandLine:
    help: bool = False
    config_files: list[str] = field(default_factory=list)
    # 'section.key' -> text (the last one wins), None: given without a value
    values: dict[str, str | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _takes_next(argv: list[str], i: int) -> bool:
    return i + 1 < len(argv) and not argv[i + 1].startswith("--") and argv[i + 1] not in HELP_FLAGS


def scan(argv: list[str]) -> CommandLine:
    """`--section.key=value`, `--section.key value`, `--config-file FILE` (`=FILE`, `-C FILE`)."""
    line = CommandLine()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, has_value, value = arg.partition("=")
        if arg in HELP_FLAGS:
            line.help = True
        elif name in CONFIG_FILE_FLAGS:
            if has_value:
                line.config_files.append(value)
            elif _takes_next(argv, i):
                i += 1
                line.config_files.append(argv[i])
            else:
                line.problems.append(f"{name}: expected a file after it")
        elif name.startswith("--") and len(name) > 2:
            key = name[2:]
            if has_value:
                line.values[key] = value
            elif _takes_next(argv, i):
                i += 1
                line.values[key] = argv[i]
            else:
                line.values[key] = None
        else:
            line.problems.append(f"{arg!r}: not an option; options are --section.key=value "
                                 "(see --help)")
        i += 1
    return line
