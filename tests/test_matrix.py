"""Every task in every mode the CLI accepts, and every pair it refuses.

Scripted tiny checkpoints answer a fixed text whatever the input: plain text
for caption/ocr/vqa, a bbox JSON list for ground, a schema-valid invoice for
extract. Each record must carry the task's own fields: ground `objects` in
pixels of its image, extract `data` valid against the schema and `attempts`
(or the error record when no answer is valid).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import media_factory

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "invoice.schema.json"
TEXT_ANSWER = "A small red square."
BOX_ANSWER = '```json\n[{"bbox_2d": [100, 200, 500, 600], "label": "total"}]\n```'
INVOICE = {"invoice_number": "INV-7", "date": "2024-03-15", "total": 12.5,
           "line_items": [{"description": "Tea", "amount": 12.5}]}
EXTRACT_ANSWER = json.dumps(INVOICE)
BAD_EXTRACT_ANSWER = json.dumps({"invoice_number": 7})

TASK_ARGS = {
    "caption": [],
    "ocr": [],
    "vqa": ["--prompt", "What colour is it?"],
    "ground": ["--prompt", "the total"],
    "extract": ["--schema", str(SCHEMA)],
}
ANSWERS = {"caption": TEXT_ANSWER, "ocr": TEXT_ANSWER, "vqa": TEXT_ANSWER, "ground": BOX_ANSWER,
           "extract": EXTRACT_ANSWER}

ALL = ["caption", "ocr", "vqa", "ground", "extract"]
MODES = {  # mode -> tasks the CLI accepts in it
    "image": ALL,
    "images": ["caption", "ocr", "vqa", "extract"],
    "pdf": ALL,
    "video": ["caption", "ocr", "vqa", "extract"],
    "history": ALL,
    "batch": ALL,
    "batch-size-2": ALL,
    "chat": ["caption", "ocr", "vqa"],
    "stream": ["caption", "ocr", "vqa"],
}
PAIRS = [(task, mode) for mode, tasks in MODES.items() for task in tasks]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("matrix")
    return {
        "a": media_factory.jpeg(folder / "a.jpg", size=(64, 48)),
        "b": media_factory.jpeg(folder / "b.jpg", size=(48, 64), color=(0, 0, 200)),
        "pdf": media_factory.pdf(folder / "doc.pdf", pages=2),
        "mp4": media_factory.mp4(folder / "clip.mp4", frames=8, size=(64, 48)),
    }


def expected_objects(width: int, height: int) -> list[dict]:
    x1, y1, x2, y2 = 100, 200, 500, 600
    return [{"label": "total", "bbox": [round(x1 / 1000 * width), round(y1 / 1000 * height),
                                        round(x2 / 1000 * width), round(y2 / 1000 * height)]}]


def check_fields(task: str, result: dict, size: tuple[int, int] | None) -> None:
    """The task's own fields in a record (or a PDF page entry)."""
    assert result["error"] is None, result
    assert result["text"] == ANSWERS[task]
    if task == "ground":
        assert result["objects"] == expected_objects(*size)
    elif task == "extract":
        import jsonschema

        jsonschema.validate(result["data"], json.loads(SCHEMA.read_text()))
        assert result["data"] == INVOICE and result["attempts"] == 1
    else:
        assert "objects" not in result and "data" not in result


def check_prompt(task: str, record: dict) -> None:
    if task == "ground":
        assert "the total" in record["prompt"] and "bbox_2d" in record["prompt"]
    elif task == "extract":
        assert '"invoice_number"' in record["prompt"]  # the schema reaches the prompt


@pytest.mark.parametrize("task,mode", PAIRS, ids=[f"{t}-{m}" for t, m in PAIRS])
def test_task_in_mode(cli, scripted_model, files, tmp_path, task, mode):
    model = scripted_model(ANSWERS[task])
    common = ["--task", task, *TASK_ARGS[task], "--model", model, "--max-new-tokens", "4", "--dpi", "36",
              "--max-frames", "4"]
    if mode in ("image", "images", "video", "history"):
        argv = {"image": ["--image", files["a"]], "images": ["--images", files["a"], files["b"]],
                "video": ["--video", files["mp4"]], "history": ["--image", files["a"]]}[mode]
        hist = tmp_path / "h.json"
        if mode == "history":
            hist.write_text(json.dumps([{"role": "user", "content": "Hello"},
                                        {"role": "assistant", "content": "Hi."}]))
            argv += ["--history", hist]
        r = cli(*argv, *common, "--format", "json")
        assert r.code == 0, r
        record = r.json
        inputs = record["inputs"]
        assert len(inputs) == {"images": 2}.get(mode, 1)
        check_fields(task, record, (inputs[0]["width"], inputs[0]["height"]))
        check_prompt(task, record)
        if mode == "history":
            turns = json.loads(hist.read_text())
            assert [t["role"] for t in turns] == ["user", "assistant"] * 2
            assert turns[3]["content"] == [{"type": "text", "text": ANSWERS[task]}]
    elif mode == "pdf":
        r = cli("--image", files["pdf"], *common, "--format", "json")
        assert r.code == 0, r
        record = r.json
        assert [p["page"] for p in record["pages"]] == [1, 2]
        for page, described in zip(record["pages"], record["inputs"]):
            check_fields(task, page, (described["width"], described["height"]))
        check_prompt(task, record)
    elif mode.startswith("batch"):
        size = "2" if mode == "batch-size-2" else "1"
        r = cli("--batch", files["a"], files["b"], files["pdf"], "--batch-size", size, *common)
        assert r.code == 0, r
        records = [json.loads(line) for line in r.out.splitlines()]
        assert [x["key"] for x in records] == [str(files["a"]), str(files["b"]), f"{files['pdf']}#page=1",
                                               f"{files['pdf']}#page=2"]
        for record in records:
            check_fields(task, record, (record["inputs"][0]["width"], record["inputs"][0]["height"]))
            check_prompt(task, record)
        if size == "2":
            assert {x["timings"].get("batch_size") for x in records} == {2}
    elif mode == "chat":
        r = cli("--chat", "--image", files["a"], *common, "--prompt", "Describe it.", stdin=b"")
        assert r.code == 0, r
        assert r.out == ANSWERS[task] + "\n"
    elif mode == "stream":
        r = cli("--image", files["a"], "--stream", *common)
        assert r.code == 0, r
        assert r.out == ANSWERS[task] + "\n"


@pytest.mark.parametrize("batch_size", ["1", "2"])
def test_extract_in_a_batch_retries_then_gives_the_error_record(cli, scripted_model, files, batch_size):
    r = cli("--batch", files["a"], files["b"], "--batch-size", batch_size, "--task", "extract", "--schema", SCHEMA,
            "--retries", "1", "--model", scripted_model(BAD_EXTRACT_ANSWER), "--max-new-tokens", "4")
    assert r.code == 1
    records = [json.loads(line) for line in r.out.splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["error"]["type"] == "parse_error" and "after 2 attempts" in record["error"]["message"]
        assert record["attempts"] == 2 and record.get("data") is None and record["text"] == BAD_EXTRACT_ANSWER
    assert r.err.count("error: ") == 2 and f"error: {files['a']}: no answer valid" in r.err


def test_the_issue_batch_commands(cli, scripted_model):
    """`--batch test_images/sample.jpg --task extract --schema ...` and `--task ground --prompt ...`."""
    sample = ROOT / "test_images" / "sample.jpg"
    extract = cli("--batch", sample, "--task", "extract", "--schema", SCHEMA,
                  "--model", scripted_model(EXTRACT_ANSWER), "--max-new-tokens", "4")
    assert extract.code == 0, extract
    record = json.loads(extract.out)
    assert record["data"] == INVOICE and record["attempts"] == 1 and '"invoice_number"' in record["prompt"]
    ground = cli("--batch", sample, "--task", "ground", "--prompt", "the total",
                 "--model", scripted_model(BOX_ANSWER), "--max-new-tokens", "4")
    assert ground.code == 0, ground
    record = json.loads(ground.out)
    width, height = record["inputs"][0]["width"], record["inputs"][0]["height"]
    assert record["prompt"] != "the total" and "bbox_2d" in record["prompt"]
    assert record["objects"] == expected_objects(width, height)


REFUSED = [
    (["--images", "a.jpg", "b.jpg", "--task", "ground", "--prompt", "x"], "--task ground takes exactly one image"),
    (["--video", "v.mp4", "--task", "ground", "--prompt", "x"], "--task ground takes exactly one image"),
    (["--image", "a.jpg", "--video", "v.mp4", "--task", "ground", "--prompt", "x"],
     "--task ground takes exactly one image"),
    (["--history", "h.json", "--task", "ground", "--prompt", "x"], "--task ground takes exactly one image"),
    (["--image", "a.jpg", "--stream", "--task", "ground", "--prompt", "x"], "--stream cannot be combined with"),
    (["--image", "a.jpg", "--stream", "--task", "extract", "--schema", "s.json"], "--stream cannot be combined with"),
    (["--chat", "--image", "a.jpg", "--task", "ground", "--prompt", "x"], "--chat cannot be combined with"),
    (["--chat", "--image", "a.jpg", "--task", "extract", "--schema", "s.json"], "--chat cannot be combined with"),
    (["--batch", "a.jpg", "--task", "ground", "--prompt", "x", "--annotate", "o.png"], "--annotate works on one"),
    (["--images", "a.jpg", "b.jpg", "--task", "ground", "--prompt", "x", "--annotate", "o.png"],
     "--task ground takes exactly one image"),
    (["--image", "doc.pdf", "--task", "ground", "--prompt", "x", "--annotate", "o.png"],
     "--annotate takes exactly one image"),
    (["--chat", "--image", "doc.pdf"], "--chat cannot be combined with a PDF"),
    (["--video", "v.mp4", "--image", "doc.pdf"], "--video cannot be combined with a PDF"),
]


@pytest.mark.parametrize("argv,expected", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refused_pairs_exit_2_before_loading(cli, tmp_path, argv, expected):
    # Neither the inputs nor the model exist: a refusal comes before either is looked at.
    r = cli(*argv, "--model", str(tmp_path / "no-model"))
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], r.err
    assert r.out == ""
