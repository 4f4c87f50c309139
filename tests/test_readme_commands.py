"""Every `python -m ferlib.run` command in the README parses with the runner's own parser,
so the documented options cannot drift from the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ferlib.run import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if "-m ferlib.run " in line and not line.startswith("#"):
                command = line.split("-m ferlib.run ", 1)[1]
                commands.append(command.removeprefix("-- "))  # torchrun keeps what follows its "--"
    return commands


def test_the_readme_documents_the_runner():
    assert len(_commands()) >= 8


@pytest.mark.parametrize("command", _commands())
def test_readme_command_parses(command):
    build_parser().parse_args(shlex.split(command))
