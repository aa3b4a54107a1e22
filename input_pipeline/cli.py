"""The one boundary every command-line tool of the project runs behind.

`run` is absl's `app.run` where a user's mistake — a bad flag or config key (absl's and
ml_collections' own errors), a library's `InputDataError`, a file the OS cannot open — prints
`error: <one line>` on stderr and exits with status 2, before anything is half-written. Only a
bug prints a traceback.
"""

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from absl import app, flags

from input_pipeline.errors import InputDataError

USER_ERROR_STATUS = 2
PROJECT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) with configs/


def project_path(path: str) -> str:
    """`path` as given when it exists from the working directory, else the project's file of
    that name (`configs/pretrain.py`): the documented commands work from any directory."""
    if os.path.isabs(path) or os.path.exists(path) or not (PROJECT / path).exists():
        return path
    return str(PROJECT / path)


def _config_files_from_anywhere(argv: list[str]) -> list[str]:
    """`--config=configs/x.py[:variants]` made the project's when the working directory has
    no such file."""
    found = []
    for arg in argv:
        if arg.startswith("--config=") and not arg.startswith("--config=/"):
            path, colon, variants = arg.removeprefix("--config=").partition(":")
            arg = f"--config={project_path(path)}{colon}{variants}"
        found.append(arg)
    return found


def fail(message: str) -> NoReturn:
    """A user's mistake: one line on stderr (a list of missing files: a line each), exit 2."""
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
    argv = _config_files_from_anywhere(argv)
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
