"""What every subcommand shares: one-line errors, output, argument types, attaching."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import orjson

from shmdiag.core.models import Severity

if TYPE_CHECKING:
    from shmdiag.inspector import Inspector
    from shmdiag.recorder import Recorder

JSON_OPTS = orjson.OPT_UTC_Z


class UsageError(Exception):
    """A mistake in how the command was called: exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line, not the usage block and a line. The line starts
    with the program's name: "shmdiag" for every subcommand, "loadgen" for tools/loadgen.py."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see '{self.prog} --help')\n")


def err(msg: str) -> None:
    sys.stderr.write(f"shmdiag: error: {msg}\n")
    sys.stderr.flush()


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj, option=JSON_OPTS | orjson.OPT_NON_STR_KEYS)


def print_json(obj: object, *, indent: bool = True) -> None:
    opts = JSON_OPTS | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    sys.stdout.flush()
    sys.stdout.buffer.write(orjson.dumps(obj, option=opts) + b"\n")
    sys.stdout.buffer.flush()


def severity_arg(text: str) -> Severity:
    t = text.strip()
    if t.isdigit() and int(t) in Severity._value2member_map_:
        return Severity(int(t))
    try:
        return Severity[t.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a severity (one of {', '.join(s.name.lower() for s in Severity)}, or 0-4)") from None


def count_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def read_toml(path: str) -> dict:
    """The TOML file ``path`` (a config file); UsageError with one line if it cannot be read."""
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]  # installed or not
        except ImportError:
            raise UsageError("reading a config file needs Python 3.11 or the 'tomli' package "
                             "(pip install tomli)") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path}: not valid TOML: {e}") from None


def check_name(name: str) -> str:
    from shmdiag.core.config import validate_name

    try:
        return validate_name(name)
    except ValueError as e:
        raise UsageError(str(e).removeprefix("name: ")) from None


def attached(name: str) -> Inspector:
    """An Inspector of the ring (mapped read-only: a read command cannot write into it); use it
    in a ``with`` block, which closes it."""
    from shmdiag.inspector import Inspector

    return Inspector.attach(check_name(name))


def attached_recorder(name: str) -> Recorder:
    """An attached Recorder, for the commands that write (``clear``); use it in a ``with`` block
    (an attached recorder never unlinks the ring)."""
    from shmdiag.recorder import Recorder

    return Recorder.attach(check_name(name))


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(text: str) -> float:
    t = text.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h", "d") if t.endswith(u)), "")
    try:
        v = float(t[: len(t) - len(unit)]) * _UNITS.get(unit, 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (seconds, or with a unit: 1.5s, 5m, 2h)") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite duration")
    return v


def seconds_arg(text: str) -> float:
    """A positive duration: seconds, or with a unit (ms, s, m, h, d)."""
    v = _seconds(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return v


def seconds_or_off_arg(text: str) -> float:
    """A duration >= 0 (0: off)."""
    v = _seconds(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds (0: off), got {text!r}")
    return v
