"""Required input files: one clear error that names every missing file and how to get it."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RequiredFile:
    config_key: str  # the config key that points to the file, e.g. "data.annotations"
    path: str
    source: str  # where a user gets it


class InputDataError(Exception):
    """A problem with the user's data or its config; `main` prints it without a traceback."""


class MissingFilesError(InputDataError, FileNotFoundError):
    """Raised before any work starts, naming every missing file, its config key and its source."""


def require_files(files: Sequence[RequiredFile]) -> None:
    missing = [f for f in files if not f.path or not Path(f.path).exists()]
    if not missing:
        return
    lines = ["Required input files are missing:"]
    for f in missing:
        lines.append(f"  --config.{f.config_key}={f.path or '<unset>'}  (not found)")
        lines.append(f"      get it from: {f.source}")
    lines.append("Point the config keys above at the files (see README, 'Data').")
    raise MissingFilesError("\n".join(lines))
