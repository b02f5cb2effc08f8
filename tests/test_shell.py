"""Every shell script of the project passes shellcheck (Debian's package)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache"}


def shell_scripts() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*")):
        if any(part in SKIP_DIRS for part in path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if path.suffix == ".sh":
            found.append(path)
        elif path.suffix == "" and path.stat().st_size < 1_000_000:
            with path.open("rb") as f:
                first = f.readline()
            if first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh")):
                found.append(path)
    return found


def test_the_scripts_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in shell_scripts()}
    assert {"predict.sh", "build.sh", "test.sh", ".ci/run", "scripts/docker_predict.sh"} <= names, names


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck; as root, "
                           "QWENVL_TEST_PROVISION=1 bash test.sh does it)")
@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck(script):
    # -x follows `source` lines; run from the root so that their paths resolve.
    r = subprocess.run(["shellcheck", "-x", "--shell=bash", str(script.relative_to(ROOT))],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# macOS runs these scripts with bash 3.2 and BSD tools. No bash 3.2 runs here,
# so this check reads the scripts for what 3.2 or the BSD tools lack; the
# macOS simulation in tests/test_first_run.py runs them without sha256sum.
BASH4_ONLY = {
    r"\b(declare|local|typeset)\s+-[a-zA-Z]*[An]": "associative arrays / namerefs (bash 4)",
    r"\b(mapfile|readarray|coproc)\b": "bash 4 builtin",
    r"\$\{[#!]?\w+(\[[^]]*\])?(,,?|\^\^?)[^}]*\}": "case conversion ${x,,} (bash 4)",
    r"\$\{\w+(\[[^]]*\])?@[QEPAaUuLK]\}": "${x@Q} transformations (bash 4.4)",
    r"\$\{\w+\[-\d+\]\}": "negative array index (bash 4.3)",
    r"\|&": "|& (bash 4)",
    r"&>>": "&>> (bash 4)",
    r";;&|;&\s*$": "case fall-through (bash 4)",
    r"\bwait\s+-n\b": "wait -n (bash 4.3)",
}
GNU_ONLY = {  # Linux-only tools or options, where the script also runs on macOS
    r"(?<![\w-])sha256sum\b": "sha256sum (macOS: shasum -a 256; use qwenvl_sha256)",
    r"\breadlink\s+-[a-z]*[fem]": "readlink -f (BSD readlink has no -f before macOS 12.3)",
    r"\bstat\s+(-c|--)": "GNU stat options (BSD stat -f)",
    r"\bsed\s+-i(\s|$)": "sed -i without an attached suffix (BSD and GNU differ; sed -i.bak works in both)",
    r"\bmktemp\s+--": "GNU mktemp options",
    r"\bdate\s+-d\b": "GNU date -d",
    r"\bgrep\s+-[a-zA-Z]*P": "grep -P (BSD grep)",
}
LINUX_ONLY = {"scripts/docker_test_base.sh"}  # debootstrap: a Linux CI host only


def _code_lines(script: Path):
    for number, line in enumerate(script.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        yield number, line


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_runs_with_macos_bash_and_tools(script):
    import re

    name = script.relative_to(ROOT).as_posix()
    rules = dict(BASH4_ONLY)
    if name not in LINUX_ONLY:
        rules.update(GNU_ONLY)
    found = [f"{name}:{n}: {why}: {line.strip()}" for n, line in _code_lines(script)
             for pattern, why in rules.items() if re.search(pattern, line)
             and not (name == "scripts/portable.sh" and "sha256sum" in why)]
    assert found == []


def test_the_macos_rules_catch_what_they_name():
    import re

    samples = {"declare -A seen": 0, "mapfile -t lines": 1, 'echo "${name,,}"': 2, 'echo "${v@Q}"': 3,
               'echo "${arr[-1]}"': 4, "cmd |& tee": 5, "cmd &>> log": 6, "wait -n": 8}
    rules = list(BASH4_ONLY)
    for line, index in samples.items():
        assert re.search(rules[index], line), line
    gnu = list(GNU_ONLY)
    for line, index in {"x | sha256sum": 0, "readlink -f x": 1, "stat -c %s f": 2, "sed -i 's/a/b/' f": 3,
                        "date -d yesterday": 5}.items():
        assert re.search(gnu[index], line), line
    assert not re.search(gnu[0], "qwenvl_sha256 | cut") and not re.search(gnu[3], "sed -i.bak 's/a/b/' f")
