"""Qwen's real byte-level BPE tokenizer, rebuilt offline from a pip-installable copy of its ranks.

The Hugging Face hub is out of reach, but the `qwen-agent` wheel on PyPI ships
`qwen_agent/utils/qwen.tiktoken`: the 151,643 BPE ranks of Qwen's vocabulary (the
same vocabulary as Qwen2, Qwen2.5, Qwen3 and Qwen3-VL; a token's rank is its id).
`qwen_tiktoken()` downloads the wheel with `pip download --no-deps` (none of
qwen-agent's dependencies), reads the file out of it, checks its sha256 and keeps
it in a cache folder:

    $QWENVL_TOKENIZER_CACHE, else $XDG_CACHE_HOME/qwenvl/tokenizer, else ~/.cache/qwenvl/tokenizer

`build_tokenizer()` turns the ranks into a `tokenizers` BPE the way tiktoken-to-HF
converters do (one merge per token: the last merge of byte-pair encoding the
token with the lower ranks only; 151,387 merges, as in Qwen2's merges.txt), with
Qwen2's pipeline (NFC, the Qwen2 split regex: digits one by one, ByteLevel) and
the added tokens of Qwen3-VL's tokenizer_config.json at their real ids.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

QWEN_AGENT_VERSION = "0.0.34"
TIKTOKEN_MEMBER = "qwen_agent/utils/qwen.tiktoken"
TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
N_RANKS = 151643
VOCAB_SIZE = 151936  # the model's embedding rows (config.json): ranks + added tokens + padding

# Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX, Qwen's tokenizer.json):
# \p{N} alone, so numbers split into single digits.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# added_tokens_decoder of Qwen3-VL's (and Qwen3's) tokenizer_config.json: id -> (content, special)
ADDED_TOKENS = {
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
    151665: ("<tool_response>", False),
    151666: ("</tool_response>", False),
    151667: ("<think>", False),
    151668: ("</think>", False),
}


class TokenizerSourceError(RuntimeError):
    """The ranks could not be fetched or do not match the pinned checksum."""


def cache_dir() -> Path:
    setting = os.environ.get("QWENVL_TOKENIZER_CACHE")
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "qwenvl" / "tokenizer"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_ranks(log) -> bytes:
    """pip download --no-deps qwen-agent==PINNED into a temporary folder; the ranks file from the wheel."""
    with tempfile.TemporaryDirectory(prefix="qwenvl-qwen-agent-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", tmp, f"qwen-agent=={QWEN_AGENT_VERSION}"]
        log(f"fetching Qwen's BPE ranks: pip download --no-deps qwen-agent=={QWEN_AGENT_VERSION}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("qwen_agent-*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = (proc.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
            raise TokenizerSourceError(f"pip download qwen-agent=={QWEN_AGENT_VERSION} failed: {reason}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                return wheel.read(TIKTOKEN_MEMBER)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise TokenizerSourceError(f"{wheels[0].name}: no {TIKTOKEN_MEMBER} ({exc})") from None


def qwen_tiktoken(log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """The path of the verified qwen.tiktoken in the cache; fetched on the first call."""
    folder = cache_dir()
    path = folder / "qwen.tiktoken"
    if path.is_file() and _sha256(path.read_bytes()) == TIKTOKEN_SHA256:
        return path
    data = _download_ranks(log)
    digest = _sha256(data)
    if digest != TIKTOKEN_SHA256:
        raise TokenizerSourceError(
            f"{TIKTOKEN_MEMBER} of qwen-agent=={QWEN_AGENT_VERSION} has sha256 {digest}, expected {TIKTOKEN_SHA256}")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".qwen.tiktoken.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return path


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != N_RANKS or sorted(ranks.values()) != list(range(N_RANKS)):
        raise TokenizerSourceError(f"{path}: expected ranks 0..{N_RANKS - 1}")
    return ranks


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order: the final pair of BPE with only lower ranks."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best, best_rank = None, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise TokenizerSourceError(f"rank {rank} cannot be reached by merging lower ranks")
        merges.append((parts[0], parts[1]))
    return merges


def build_backend(ranks: dict[bytes, int]):
    """The `tokenizers.Tokenizer` of Qwen2/Qwen3(-VL), the ids of the ranks file and the real added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_encoder = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in _merges(ranks)]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    for token_id in sorted(ADDED_TOKENS):
        content, special = ADDED_TOKENS[token_id]
        added = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        tok.add_tokens([added])
        if tok.token_to_id(content) != token_id:
            raise TokenizerSourceError(f"{content} got id {tok.token_to_id(content)}, expected {token_id}")
    return tok


def tokenizer_config() -> dict:
    """tokenizer_config.json as in Qwen3-VL's repository (less the chat template, which the processor holds)."""
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": s}
            for i, (c, s) in ADDED_TOKENS.items()
        },
        "additional_special_tokens": [c for i, (c, s) in ADDED_TOKENS.items() if s and i != 151643],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


@functools.lru_cache(maxsize=1)
def _tokenizer_json(ranks_path: Path) -> str:
    """The serialized backend, built once per process (a test session builds several checkpoints)."""
    return build_backend(load_ranks(ranks_path)).to_str()


def build_tokenizer(log=lambda msg: print(msg, file=sys.stderr)):
    """A transformers tokenizer loaded the way the real checkpoint's is (tokenizer.json + tokenizer_config.json)."""
    from transformers import AutoTokenizer

    serialized = _tokenizer_json(qwen_tiktoken(log))
    with tempfile.TemporaryDirectory(prefix="qwenvl-qwen-tokenizer-") as tmp:
        (Path(tmp) / "tokenizer.json").write_text(serialized, encoding="utf-8")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.padding_side = "left"
    return tokenizer


if __name__ == "__main__":
    print(qwen_tiktoken())
