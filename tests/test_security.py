"""Security: weights only from safetensors, no remote code, no credentials in outputs or logs,
no helper programs or network fetches triggered by the content of an input."""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hostile_factory as hf
from qwenvl.inputs import display_name, redact

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cr3t-Pa55"


class _Plant:
    """Unpickling this creates a folder: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _copy_checkpoint(tiny_model: str, dest: Path, weights: bool) -> Path:
    dest.mkdir()
    for item in Path(tiny_model).iterdir():
        if item.suffix == ".safetensors" and not weights:
            continue
        shutil.copy(item, dest / item.name)
    return dest


def test_pickled_weights_are_never_loaded(cli, tiny_model, tmp_path):
    """A checkpoint with only pytorch_model.bin is refused clearly, and the pickle is never run."""
    marker = tmp_path / "pickle-ran"
    model = _copy_checkpoint(tiny_model, tmp_path / "bin-only", weights=False)
    with open(model / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.embed_tokens.weight": _Plant(marker)}, fh)
    image = tmp_path / "p.png"
    image.write_bytes(hf.one_pixel_png())
    r = cli("--image", image, "--model", model, "--max-new-tokens", "2")
    assert r.code == 1, r
    lines = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    assert "safetensors" in lines[0] and str(model) in lines[0]
    assert r.out == ""
    assert not marker.exists(), "the pickled weights were unpickled"


def test_remote_code_in_a_checkpoint_never_runs(cli, tiny_model, tmp_path):
    """config.json's auto_map points at Python files in the folder; they are never imported."""
    marker = tmp_path / "remote-code-ran"
    model = _copy_checkpoint(tiny_model, tmp_path / "remote", weights=True)
    code = f"import os\nos.makedirs({str(marker)!r}, exist_ok=True)\n"
    for name in ("modeling_evil.py", "configuration_evil.py", "processing_evil.py", "tokenization_evil.py"):
        (model / name).write_text(code)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForImageTextToText": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    for name, auto_map in (("processor_config.json", {"AutoProcessor": "processing_evil.EvilProcessor"}),
                           ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})):
        path = model / name
        if path.exists():
            data = json.loads(path.read_text())
            data["auto_map"] = auto_map
            path.write_text(json.dumps(data))
    image = tmp_path / "p.png"
    image.write_bytes(hf.one_pixel_png())
    r = cli("--image", image, "--model", model, "--max-new-tokens", "2")
    assert "Traceback" not in r.err
    assert r.code == 0 or (r.code == 1 and r.err.count("error:") == 1), r
    assert not marker.exists(), "code from the checkpoint folder was executed"


def _from_pretrained_calls():
    for path in sorted((ROOT / "qwenvl").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                yield path.name, node


def test_every_from_pretrained_refuses_remote_code_and_pickles():
    calls = list(_from_pretrained_calls())
    assert calls, "no from_pretrained call found"
    model_calls = 0
    for name, node in calls:
        keywords = {k.arg: k.value for k in node.keywords}
        assert "trust_remote_code" in keywords, f"{name}:{node.lineno} must pass trust_remote_code=False"
        value = keywords["trust_remote_code"]
        assert isinstance(value, ast.Constant) and value.value is False, f"{name}:{node.lineno}"
        target = ast.unparse(node.func.value)
        if "Model" in target:
            model_calls += 1
            safe = keywords.get("use_safetensors")
            assert isinstance(safe, ast.Constant) and safe.value is True, f"{name}:{node.lineno} use_safetensors=True"
    assert model_calls >= 1
    for path in (ROOT / "qwenvl").glob("*.py"):
        assert "trust_remote_code=True" not in path.read_text().replace(" ", ""), path.name


def test_hub_downloads_skip_pickles_and_code():
    from qwenvl.session import CHECKPOINT_PATTERNS

    for pattern in CHECKPOINT_PATTERNS:
        for bad in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".py", ".msgpack", ".h5"):
            assert not pattern.endswith(bad) and pattern not in ("*", "*.*"), pattern
    assert "*.safetensors" in CHECKPOINT_PATTERNS


# --- credentials -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,expected",
    [
        ("https://user:pw@example.com/a.png", "https://example.com/a.png"),
        ("https://token@example.com/a.png?x=1#f", "https://example.com/a.png?x=1#f"),
        ("http://u:p@ss@example.com:8080/a.png", "http://example.com:8080/a.png"),
        ("HTTP://USER:PW@EXAMPLE.COM/A.PNG", "HTTP://EXAMPLE.COM/A.PNG"),
        ("http://u:p@host:99999/x", "http://host:99999/x"),  # an invalid port once crashed redact
        ("http://u:p@[bad/x.png", "http://[bad/x.png"),  # unparseable: credentials still removed
        ("https://example.com/a.png?email=a@b.com", "https://example.com/a.png?email=a@b.com"),
        ("/home/me/photo@2x.png", "/home/me/photo@2x.png"),
        ("see http://a:b@h/x and https://c:d@i/y", "see http://h/x and https://i/y"),
    ],
)
def test_redact(url, expected):
    assert redact(url) == expected


def test_display_name_shortens_data_uris():
    uri = "data:image/png;base64," + "A" * 10_000
    assert len(display_name(uri)) < 50 and display_name("-") == "stdin"


def test_url_credentials_are_used_but_never_shown(run_tiny, http_server, tmp_path):
    seen = []
    body = hf.save(hf.picture(), "PNG")

    def private(handler):
        seen.append(handler.headers.get("Authorization"))
        return 200, {"Content-Type": "image/png"}, body

    http_server.routes["/private.png"] = private
    host = http_server.url.split("://", 1)[1]
    url = f"http://alice:{PASSWORD}@{host}/private.png"
    out = tmp_path / "result.json"
    r = run_tiny("--image", url, "--output", out)
    assert r.code == 0, r
    assert seen and seen[0].startswith("Basic ")  # the credentials did reach the server
    record = json.loads(out.read_text())
    assert record["inputs"][0]["source"] == f"{http_server.url}/private.png"
    for text in (r.out, r.err, out.read_text()):
        assert PASSWORD not in text and "alice" not in text


@pytest.mark.parametrize("path", ["/missing.png", "/loop"])
def test_url_credentials_not_in_errors(run_tiny, http_server, path):
    http_server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    host = http_server.url.split("://", 1)[1]
    for flag in ("--image", "--video"):
        r = run_tiny(flag, f"http://alice:{PASSWORD}@{host}{path}", "--url-timeout", "2")
        assert r.code == 1 and r.err.startswith(f"error: {http_server.url}{path}: "), r
        assert PASSWORD not in r.err and "alice" not in r.err


@pytest.mark.parametrize("url", [f"http://bob:{PASSWORD}@[::1", f"http://bob:{PASSWORD}@127.0.0.1:99999/x.png",
                                 f"ftp://bob:{PASSWORD}@127.0.0.1/x.png"])
def test_malformed_url_credentials_not_in_errors(run_tiny, url):
    r = run_tiny("--image", url)
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert PASSWORD not in r.err and "bob" not in r.err


def test_hf_token_is_never_printed(cli, run_tiny, tmp_path, monkeypatch, media):
    token = "hf_SENTINELtokenDoNotPrint0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    runs = [
        run_tiny("--image", media["jpeg"], "--format", "json"),  # success, full record
        cli("--image", media["jpeg"], "--model", "someone/not-cached-model"),  # hub lookup fails (offline)
        cli("--image", media["jpeg"], "--model", tmp_path / "absent"),  # missing folder
        cli("--image", tmp_path / "absent.png"),  # input error
    ]
    assert runs[0].code == 0 and all(r.code == 1 for r in runs[1:]), runs
    for r in runs:
        assert token not in r.out and token not in r.err


# --- inputs never start programs or fetch what they name --------------------------


def test_eps_never_starts_ghostscript(tmp_path):
    """Pillow renders EPS by running Ghostscript; the tool never opens EPS at all."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-ran"
    for name in ("gs", "gswin32c", "gswin64c"):
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        fake.chmod(0o755)
    art = tmp_path / "art.eps"
    art.write_bytes(hf.eps())
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--image", str(art), "--model", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "EPS files are not supported" in r.stderr, r.stderr
    assert not marker.exists()
