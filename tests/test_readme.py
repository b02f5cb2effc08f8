"""The README stays true: its commands run, and docs/usage.md's --help block is the program's."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import update_usage_doc  # noqa: E402


def test_help_block_matches_the_program():
    doc = update_usage_doc.DOC.read_text(encoding="utf-8")
    assert update_usage_doc.doc_help(doc) == update_usage_doc.help_text(), (
        "docs/usage.md's --help block is stale: run .venv/bin/python tools/update_usage_doc.py"
    )


def readme_commands() -> list[str]:
    """Shell commands from the README's bash blocks, continuation lines joined."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


NEEDS_NETWORK = "https://example.com"
PREDICT_SH_FLAGS = {"--docker", "--venv", "--no-docker"}  # predict.sh's own mode flags


def test_readme_predict_commands_run(cli, tiny_model, tmp_path, monkeypatch):
    """Every `bash predict.sh ...` in the README, in order, on the tiny model, from a copy of the project."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("test_images", "schemas", "tools"):
        shutil.copytree(ROOT / name, work / name)
    monkeypatch.chdir(work)
    monkeypatch.setenv("QWENVL_MODEL", tiny_model)
    ran = []
    for command in readme_commands():
        if command.startswith("export "):
            key, _, value = command[len("export "):].partition("=")
            monkeypatch.setenv(key, value)
            continue
        if command.startswith(".venv/bin/python bench/"):
            continue  # the benchmarks take many minutes; tests/test_benchmark.py runs benchmark.py --quick
        if command.startswith("ls ") or command.startswith(".venv/bin/python "):
            shell = command.replace(".venv/bin/python", shlex.quote(sys.executable), 1)
            subprocess.run(["bash", "-c", shell], check=True, cwd=work, capture_output=True)
            continue
        if not command.startswith("bash predict.sh") or NEEDS_NETWORK in command:
            continue
        argv = shlex.split(command, comments=True)[2:]
        stdin = b""
        if "<" in argv:
            at = argv.index("<")
            stdin = (work / argv[at + 1]).read_bytes()
            del argv[at:at + 2]
        argv = [a for a in argv if a not in PREDICT_SH_FLAGS]
        if "--model" in argv:
            argv[argv.index("--model") + 1] = tiny_model
        if "--max-new-tokens" not in argv:
            argv += ["--max-new-tokens", "8"]
        r = cli(*argv, stdin=stdin)
        expected = 1 if "--task extract" in command or "--task ground" in command else 0
        # the tiny model's random words are not valid JSON: parsing tasks fail cleanly, exit 1
        assert r.code == expected, (command, r)
        ran.append(command)
    assert len(ran) >= 18, ran
    assert json.loads((work / "result.json").read_text())["task"] == "ocr"
    assert (work / "results.jsonl").read_text().count("\n") >= 3
    assert len(json.loads((work / "chat.json").read_text())) == 4
    assert any((work / "ocr-out").iterdir())
