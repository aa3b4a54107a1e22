"""Required input files and the user's mistakes: one clear line, never a traceback.

`require_files` names every missing file and how to get it; `run` is absl's `app.run` for every
command-line tool of the project, where a mistake (a missing or unreadable file, a bad flag or
config key) prints `error: <one line>` and exits with status 2.
"""

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from absl import app, flags
from etils import epath


@dataclass(frozen=True)
class RequiredFile:
    config_key: str  # the config key that points to the file, e.g. "data.annotations"
    path: str
    source: str  # where a user gets it


class InputDataError(Exception):
    """A problem with the user's data or its config; `main` prints it without a traceback."""


class MissingFilesError(InputDataError, FileNotFoundError):
    """Raised before any work starts, naming every missing file, its config key and its source."""


class ConfigError(InputDataError, ValueError):
    """A config key breaks a rule; the message names the key and what it takes."""


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A component built from the config raises ValueError naming the key it rejects (its own
    check, done once, where the option is used): inside this block that is the user's mistake,
    a `ConfigError`."""
    try:
        yield
    except InputDataError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def require_files(files: Sequence[RequiredFile]) -> None:
    missing = [f for f in files if not f.path or not epath.Path(f.path).exists()]  # gs:// too
    if not missing:
        return
    lines = ["Required input files are missing:"]
    for f in missing:
        lines.append(f"  --config.{f.config_key}={f.path or '<unset>'}  (not found)")
        lines.append(f"      get it from: {f.source}")
    lines.append("Point the config keys above at the files (see README, 'Data').")
    raise MissingFilesError("\n".join(lines))


USER_ERROR_STATUS = 2


def fail(message: str) -> NoReturn:
    """A user's mistake: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


def _one_line(error: BaseException) -> str | None:
    """The message of a user's mistake, or None for anything else (a bug keeps its traceback)."""
    if isinstance(error, InputDataError | app.UsageError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, OSError) and "Failed loading config file" in str(error):
        # ml_collections loads --config lazily, listing the paths it tried: keep the reason.
        return f"--config: {str(error).strip().splitlines()[-1].strip()}"
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, its errors (an unknown flag or config key, a bad value) in one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # a config file's own error comes with its traceback's text
        lines = str(error).strip().splitlines()
        fail(lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}")
    except (AttributeError, KeyError) as error:  # ml_collections: an override of a missing key
        key = str(error).strip("'\"")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
        fail(f"{given[0] if given else key}: no such config key")


def run(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)` where the user's mistakes exit 2 in one line; absl and orbax logs stay at
    WARNING (the tool's own output is what it prints)."""

    def guarded(argv: list[str]) -> Any:
        logging.getLogger("absl").setLevel(logging.WARNING)
        try:
            return main(argv)
        except (InputDataError, app.UsageError, OSError) as error:
            message = _one_line(error)
            if message is None:
                raise
            fail(message)

    app.run(guarded, flags_parser=_parse_flags)
