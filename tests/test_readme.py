"""README.md's shell examples work as pasted after ``make demo``: every ``imageindex`` command in
its code blocks runs against the demo index, from the checkout's layout, with no ``IMAGEINDEX_*``
variables. A command that needs what a laptop lacks ends with ``# needs: <what>`` and is skipped
by name, never silently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from demo_project import README, demo_project, load_demo_script, run_in  # noqa: F401

#: What a README command may declare it needs (``# needs: s3``); anything else is a typo.
NEEDS = {"s3", "hosted", "opensearch", "airflow"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_COMMAND = re.compile(r"^(?:\$ )?((?:\.venv/bin/)?imageindex\s.*)$")
_NEEDS = re.compile(r"\s+#\s*needs:\s*(\S+)\s*$")
_RANKED = re.compile(r"^\s*1\.\s+-?\d\.\d{4}\s+\S")


def readme_commands(text: str) -> list[tuple[str, str | None, int]]:
    """``(command, needs or None, line number)`` of every ``imageindex`` line (a ``$ `` prompt
    and ``\\`` continuations allowed) in the shell code blocks of ``text``."""
    found: list[tuple[str, str | None, int]] = []
    lang: str | None = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line)
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang is None or lang not in ("", "bash", "sh", "shell", "console"):
            continue
        if pending:
            line, pending = pending + " " + line.strip(), ""
        else:
            start = number
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1].rstrip()
            continue
        match = _COMMAND.match(line.strip())
        if not match:
            continue
        command = match.group(1)
        needs = _NEEDS.search(command)
        found.append((command[: needs.start()] if needs else command, needs and needs[1], start))
    return found


def _params():
    out = []
    for command, needs, line in readme_commands(README.read_text(encoding="utf-8")):
        marks = [pytest.mark.skip(reason=f"README.md:{line} marks it '# needs: {needs}'")]
        out.append(pytest.param(command, id=f"L{line}", marks=marks if needs else []))
    return out


def test_extractor_reads_blocks_prompts_continuations_and_needs():
    text = (
        "```\n$ imageindex search --dataset d \\\n    --text x\n  1. 0.5  a.png\n```\n"
        "`imageindex inline` is prose\n"
        "```bash\n.venv/bin/imageindex export --to s3://b/x.csv  # needs: s3\n```\n"
        "```python\nimageindex.search('d')\n```\n"
        "```yaml\nimageindex search in yaml\n```\n"
    )
    assert readme_commands(text) == [
        ("imageindex search --dataset d --text x", None, 2),
        (".venv/bin/imageindex export --to s3://b/x.csv", "s3", 8),
    ]


def test_readme_has_the_examples_and_only_known_needs():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10
    assert {needs for _, needs, _ in commands} - {None} <= NEEDS
    # the s3 export is declared, so it is skipped by name, not dropped
    assert any(needs == "s3" and "export" in c for c, needs, _ in commands)


def test_demo_prints_commands_the_readme_shows():
    demo = load_demo_script()
    shown = {c for c, _, _ in readme_commands(README.read_text(encoding="utf-8"))}
    assert demo.NEXT_COMMANDS and set(demo.NEXT_COMMANDS) <= shown
    # with its state elsewhere the demo's commands still find it
    assert demo.next_commands(Path("/elsewhere"))[0].startswith("IMAGEINDEX_HOME=/elsewhere ")


@pytest.mark.parametrize("command", _params())
def test_readme_command_runs(demo_project, command):  # noqa: F811
    proc = run_in(demo_project, command)
    assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    assert "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr
    out = proc.stdout
    assert out.strip(), f"{command}: printed nothing"
    if " search " in command and "--json" in command:
        hits = json.loads(out)
        assert hits and all(h["uri"].startswith("file://") and "score" in h for h in hits)
    elif " search " in command:
        # every example finds something in the demo: one that shows "no hits" teaches nothing
        assert _RANKED.match(out.splitlines()[0]), f"{command}: no ranked hits\n{out}"
    elif " export " in command:
        result = json.loads(out)
        assert result["count"] > 0 and (demo_project / result["uri"]).is_file()
    elif command.endswith(" datasets"):
        assert re.match(r"^samples\tv1\*\t[1-9]\d*\t", out), out
