"""Strict command-line configuration on top of fastargs, shared by every CLI.

fastargs alone ignores unknown keys in config files and exits with status 0 on an invalid value.
Here every unknown key (in a YAML/JSON file or on the command line, with the keys probably
meant), missing required value and invalid value is a one-line error naming the key, all reported
together, and the program exits with status 2.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fastargs import get_current_config
from fastargs.exceptions import MissingValueError, ValidationError
from fastargs.validation import Checker

from .config_argv import scan
from .config_help import constraint, help_text
from .config_suggest import hint

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the user's input: reported as one `error:` line, exit status 2."""


def fail(message: str, code: int = EXIT_USAGE):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


class Flag(Checker):
    """0/1 (also true/false, yes/no). fastargs' own bool checker turns the string "0" into True."""

    def check(self, value):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)

    def help(self):
        return "0 or 1"


class IntRange(Checker):
    """An integer within [minimum, maximum] (either bound optional)."""

    def __init__(self, minimum=None, maximum=None):
        self.minimum, self.maximum = minimum, maximum

    def check(self, value):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        number = int(value)
        if (self.minimum is not None and number < self.minimum) or \
                (self.maximum is not None and number > self.maximum):
            raise ValueError(value)
        return number

    def help(self):
        if self.maximum is None:
            return f"an integer >= {self.minimum}"
        if self.minimum is None:
            return f"an integer <= {self.maximum}"
        return f"an integer in [{self.minimum}, {self.maximum}]"


class FloatList(Checker):
    """Comma-separated floats (or a YAML list), e.g. 0.5,0.7,0.9."""

    def __init__(self, allow_empty: bool = False):
        self.allow_empty = allow_empty

    def check(self, value):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        result = [float(x) for x in items if str(x).strip() != ""]
        if not result and not self.allow_empty:
            raise ValueError(value)
        return result

    def help(self):
        return "comma-separated numbers"


class StrList(Checker):
    """Comma-separated strings (or a YAML list), e.g. 2:4,4:8."""

    def __init__(self, allow_empty: bool = False):
        self.allow_empty = allow_empty

    def check(self, value):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        result = [str(x).strip() for x in items if str(x).strip()]
        if not result and not self.allow_empty:
            raise ValueError(value)
        return result

    def help(self):
        return "comma-separated values"


def _flatten(mapping, prefix=()):
    for key, value in mapping.items():
        path = prefix + tuple(str(key).split("."))
        if isinstance(value, dict):
            yield from _flatten(value, path)
        else:
            yield path, value


def _load_file(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: config file not found")
    text = file.read_text()
    try:
        content = json.loads(text)
    except json.JSONDecodeError:
        import yaml
        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"{path}: not valid YAML or JSON ({err.__class__.__name__})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UsageError(f"{path}: expected a mapping of sections to keys")
    return content


def _sources(line, problems: list[str]):
    """(file name, {'section.key': value}) of each config file in order, then (None, the
    command line's)."""
    for name in line.config_files:
        try:
            yield name, {".".join(path): value for path, value in _flatten(_load_file(name))}
        except UsageError as err:
            problems.append(str(err))
    yield None, line.values


def _collect(config, line, closed: dict[str, str], aliases) -> tuple[list[str], list[str]]:
    """Set the config's content from files, then the command line, then `section.key`
    environment variables (as fastargs does). Returns (problems, notes)."""
    declared = {".".join(path): path for path in config.entries}
    accepted = [key for key, path in declared.items() if path[0] not in closed]
    other_names = {k: v for k, v in (aliases.TARGETS.items() if aliases else ())
                   if v is None or v in declared}
    suggestable = {k: v for k, v in other_names.items() if v is None or v in accepted}
    problems, notes = list(line.problems), []
    for label, given in _sources(line, problems):
        where = f"{label}: " if label else ""
        spell = (lambda k: f"'{k}'") if label else (lambda k: f"--{k}")
        shut: dict[str, list[str]] = {}  # closed section -> the keys given for it
        for key in list(given):
            section = (other_names.get(key) or key).partition(".")[0]
            if section in closed:
                shut.setdefault(section, []).append(spell(key))
                del given[key]
        problems += [f"{where}{', '.join(keys)}: {closed[section]}"
                     for section, keys in shut.items()]
        if aliases:
            given, found_notes, errors = aliases.translate(given, from_file=label is not None)
            notes += [f"{label or 'command line'}: {note}" for note in found_notes]
            problems += [f"{label or 'command line'}: {error}" for error in errors]
        for key, value in given.items():
            if key not in declared:
                problems.append(f"{where}unknown key {spell(key)}"
                                f"{hint(key, accepted, spell, suggestable)}")
            elif value is not None:  # a YAML `key:` with no value keeps the default
                config.content[declared[key]] = value
            elif not label:
                problems.append(f"--{key}: expected a value (--{key}=VALUE)")
    for key in accepted:
        if key in os.environ:
            config.content[declared[key]] = os.environ[key]
    return problems, notes


def _value_problems(config, without_value) -> list[str]:
    problems = []
    for path in config.entries:
        try:
            config[path]
        except MissingValueError:
            if ".".join(path) not in without_value:  # reported already
                problems.append(f"--{'.'.join(path)} is required")
        except ValidationError:
            problems.append(f"--{'.'.join(path)}={config.content.get(path)!r}: expected "
                            f"{constraint(config.entries[path].checker)}")
    return problems


def parse(description: str, argv: list[str] | None = None, *, aliases=None,
          closed_sections: dict[str, str] | None = None) -> dict[str, dict]:
    """Parse the declared fastargs sections from `argv` (default: sys.argv[1:]) strictly.

    Returns {section: {key: value}} with defaults filled in. Every mistake (unknown keys, with the
    keys probably meant, missing and invalid values) is reported at once; then exit status 2.
    `aliases`: another tool's key names read as ours (a module like `config_aliases`).
    `closed_sections`: {section: why} declared sections this script does not accept: refused
    when given, left out of --help, their keys keep their defaults.
    """
    config = get_current_config()
    closed = closed_sections or {}
    line = scan(sys.argv[1:] if argv is None else list(argv))
    if line.help:
        footer = (f"{aliases.DIALECT}'s key names are accepted too, e.g. "
                  f"{', '.join(list(aliases.RENAMED)[:3])}, ... (see the docs' alias table)."
                  if aliases else "")
        print(help_text(Path(sys.argv[0]).name, description, config, closed, footer), end="")
        sys.exit(0)
    problems, notes = _collect(config, line, closed, aliases)
    problems += _value_problems(config, {k for k, v in line.values.items() if v is None})
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    if problems:
        for message in problems:
            print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    values: dict[str, dict] = {}
    for path in config.entries:
        section, key = path[0], ".".join(path[1:])
        values.setdefault(section, {})[key] = config[path]
    return values


def num_classes(given: int, dataset: str, option: str = "--model.num_classes") -> int:
    """`given` when set, else the class count in the dataset's .classes.json (written beside every
    .beton by write_datasets.py)."""
    if given:
        return given
    classes = dataset + ".classes.json"
    if not Path(classes).is_file():
        raise UsageError(f"{option} not given and {classes} not found; pass it explicitly")
    return len(json.loads(Path(classes).read_text()))


def given_keys() -> set[str]:
    """'section.key' of every value the user gave (command line or --config-file) in the last
    `parse`, as opposed to a default: run-aware defaults may fill in only the others."""
    return {".".join(path) for path in get_current_config().content}
