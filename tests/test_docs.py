"""The docs cannot drift: every command of the README, docs/ and PERFORMANCE.md runs as written.

Each `python -m <module> ...` line of their code blocks names a module that exists, and its
flags, config file, `--config.*` keys and values parse as that tool parses them (one process for
all: tests/bad_flags.py `--documented`); placeholders (`<...>`) stand for the reader's values and
are left out of the parse. `make` targets exist in the Makefile, scripts under launch/ and bench/
exist, and every relative link resolves.
"""

import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, scratch_folder
from tests.test_bad_inputs import ENV

PAGES = sorted([REPO / "README.md", REPO / "PERFORMANCE.md", *(REPO / "docs").glob("*.md")])
OTHERS = {"pytest", "tensorboard.main"}  # libraries' own programs, not this project's tools
BLOCK = re.compile(r"^ *```(?:bash|sh|shell)\n(.*?)^ *```", re.MULTILINE | re.DOTALL)


def _commands() -> list[tuple[str, int, list[str]]]:
    """(page, line, words) of each command in the pages' code blocks, continuation lines
    joined, comments dropped."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in BLOCK.finditer(text):
            first = text[: block.start(1)].count("\n") + 1
            joined, start = "", None
            for number, line in enumerate(block.group(1).splitlines(), first):
                line = re.sub(r"\s+#\s.*$|^\s*#.*$", "", line).strip()
                start = number if not joined else start
                if line.endswith("\\"):
                    joined += line[:-1] + " "
                    continue
                joined += line
                if joined.strip():
                    found.append((page.name, start, shlex.split(joined)))
                joined = ""
    return found


def _python_commands() -> list[tuple[str, int, str, list[str]]]:
    runs = []
    for page, line, words in _commands():
        for i, word in enumerate(words[:-2]):
            if word.endswith("python") and words[i + 1] == "-m":
                runs.append((page, line, words[i + 2], words[i + 3 :]))
    return runs


def test_the_pages_document_commands() -> None:
    assert len(_python_commands()) >= 40  # a change of the pages' format must not empty this


@functools.cache
def _parsed() -> dict[tuple[str, int], dict]:
    """Each documented tool command parsed by the tool (placeholder arguments left out)."""
    cases, where = [], []
    for page, line, module, args in _python_commands():
        if module in OTHERS:
            continue
        given = [arg for arg in args if "<" not in arg and arg.startswith("-")]
        cases.append([module, given])
        where.append((page, line))
    scratch = scratch_folder("docs_")
    done = subprocess.run(
        [sys.executable, "-m", "tests.bad_flags", scratch, "--documented", json.dumps(cases)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"tests/bad_flags.py failed:\n{done.stderr[-3000:]}")
    return dict(zip(where, (json.loads(line) for line in done.stdout.splitlines()), strict=True))


@pytest.mark.parametrize(
    ("page", "line", "module", "args"),
    _python_commands(),
    ids=[f"{page}:{line}:{module}" for page, line, module, _ in _python_commands()],
)
def test_a_documented_command_runs_as_written(page, line, module, args) -> None:
    assert importlib.util.find_spec(module) is not None, f"{page}:{line}: no module {module}"
    if module in OTHERS:
        return
    result = _parsed()[(page, line)]
    assert result["status"] == 0, f"{page}:{line}: {result['argv']}\n{result['stderr'][-2000:]}"


def test_make_targets_and_scripts_exist() -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    for page, line, words in _commands():
        if words[0] == "make":
            for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
                assert target in targets, f"{page}:{line}: no make target {target}"
        for word in words:
            if re.fullmatch(r"(launch|bench)/[\w./-]+\.(sh|sbatch)", word):
                assert (REPO / word).is_file(), f"{page}:{line}: no script {word}"


def test_every_relative_link_resolves() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
