"""Strict command-line configuration on top of fastargs, shared by every CLI.

fastargs alone ignores unknown keys in config files and exits with status 0 on an invalid value.
Here an unknown key (in a YAML/JSON file or on the command line), a missing required value or an
invalid value is a one-line error naming the key, and the program exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastargs import get_current_config
from fastargs.exceptions import MissingValueError, ValidationError
from fastargs.validation import Checker

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


def _describe(config, path) -> str:
    param = config.entries[path]
    return param.checker.help()


def parse(description: str, argv: list[str] | None = None) -> dict[str, dict]:
    """Parse the declared fastargs sections from `argv` (default: sys.argv[1:]) strictly.

    Returns {section: {key: value}} with defaults filled in. Exits with status 2 on any mistake.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config = get_current_config()
    try:
        files = argparse.ArgumentParser(add_help=False)
        files.add_argument("--config-file", "-C", action="append", default=[])
        known, _ = files.parse_known_args(argv)
        for name in known.config_file:
            for path, _ in _flatten(_load_file(name)):
                if path not in config.entries:
                    section = path[0]
                    keys = sorted(".".join(p[1:]) for p in config.entries if p[0] == section)
                    hint = (f"known keys of section '{section}': {', '.join(keys)}" if keys else
                            f"known sections: {', '.join(sorted({p[0] for p in config.entries}))}")
                    raise UsageError(f"{name}: unknown key '{'.'.join(path)}' ({hint})")
    except UsageError as err:
        fail(str(err))

    parser = argparse.ArgumentParser(description=description)
    saved_argv = sys.argv
    sys.argv = [saved_argv[0]] + argv
    try:
        config.augment_argparse(parser)  # unknown --section.key arguments: argparse exits with 2
        config.collect_argparse_args(parser)
    finally:
        sys.argv = saved_argv

    errors = []
    for path in config.entries:
        try:
            config[path]
        except MissingValueError:
            errors.append(f"--{'.'.join(path)} is required")
        except ValidationError:
            errors.append(f"--{'.'.join(path)}={config.content.get(path)!r}: expected "
                          f"{_describe(config, path)}")
    if errors:
        for message in errors:
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
