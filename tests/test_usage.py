"""Usage errors: one line on stderr, exit 2, found before any input or model is touched."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USAGE_CASES = [
    ([], "no input"),
    (["--image", "x.jpg", "--task", "vqa"], "--task vqa needs a question"),
    (["--image", "x.jpg", "--task", "translate"], "invalid choice"),
    (["--image", "x.jpg", "--max-new-tokens", "0"], "must be at least 1"),
    (["--image", "x.jpg", "--max-new-tokens", "many"], "expected a whole number"),
    (["--image", "x.jpg", "--temperature", "-1"], ">= 0"),
    (["--image", "x.jpg", "--top-p", "1.5", "--temperature", "0.7"], "--top-p 1.5 must be in (0, 1]"),
    (["--image", "x.jpg", "--top-k", "5"], "add --temperature above 0"),
    (["--image", "x.jpg", "--min-pixels", "900000", "--max-pixels", "100000"], "is larger than --max-pixels"),
    (["--image", "x.jpg", "--pages", "3-1"], "--pages '3-1'"),
    (["--image", "x.jpg", "--pages", "one"], "expected page numbers"),
    (["--image", "x.jpg", "--dpi", "5000"], "--dpi 5000"),
    (["--image", "-", "--video", "-"], "standard input (-) can be read only once"),
    (["--image", "x.jpg", "--prompt", "  "], "--prompt is empty"),
    (["--image", "x.jpg", "--format", "xml"], "invalid choice"),
    (["--image", "x.jpg", "--device", "tpu"], "invalid choice"),
    (["--image", "x.jpg", "--bogus"], "unrecognized arguments"),
]


@pytest.mark.parametrize("argv,expected", USAGE_CASES, ids=[c[1] for c in USAGE_CASES])
def test_usage_errors(cli, tmp_path, argv, expected):
    # The model does not exist: a usage error must be reported before it is looked for.
    r = cli(*argv, "--model", str(tmp_path / "no-model"))
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], r.err
    assert r.out == ""


def test_pdf_mixed_with_images_is_a_usage_error(cli, media, tmp_path):
    r = cli("--image", media["pdf"], "--image", media["jpeg"], "--model", str(tmp_path / "none"))
    assert r.code == 2 and "cannot share one prompt" in r.err


def test_pages_without_pdf(cli, media, tmp_path):
    r = cli("--image", media["jpeg"], "--pages", "1", "--model", str(tmp_path / "none"))
    assert r.code == 2 and "--pages applies to PDFs" in r.err


def test_help_is_instant_and_imports_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from qwenvl.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "assert '--max-new-tokens' in buf.getvalue()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'PIL', 'av') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_version_return_zero_in_process(cli):
    r = cli("--version")
    assert r.code == 0 and r.out.startswith("predict.py ")
    h = cli("--help")
    assert h.code == 0 and "--max-new-tokens" in h.out and h.err == ""


def test_predict_py_entry_exit_codes(tmp_path):
    r = subprocess.run([sys.executable, "predict.py", "--task", "vqa", "--image", "a.jpg"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: --task vqa needs a question: add --prompt \"...\" (see --help)"]
    v = subprocess.run([sys.executable, "predict.py", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("predict.py ")


def test_predict_py_ends_without_teardown_after_exit_handlers_and_flushing():
    """cli.entry: main's exit code, stdout flushed whole, the exit handlers registered later
    (torch's, transformers') still run, and the interpreter's teardown (which frees the model
    object by object) is skipped."""
    code = textwrap.dedent("""
        import atexit, sys
        from qwenvl import cli

        class Freed:
            def __del__(self):
                sys.stderr.write("torn down\\n")

        kept = Freed()

        def main():
            atexit.register(lambda: sys.stderr.write("handler ran\\n"))
            sys.stdout.write("x" * 100000)
            return 3

        cli.main = main
        cli.entry()
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3 and r.stdout == "x" * 100000
    assert r.stderr.splitlines() == ["handler ran"]
    failed = subprocess.run([sys.executable, "-c", code.replace("return 3", "raise SystemExit(4)")], cwd=ROOT,
                            capture_output=True, text=True)  # no exit code from main: the usual teardown
    assert failed.returncode == 4 and failed.stderr.splitlines() == ["handler ran", "torn down"]
