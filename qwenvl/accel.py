"""How the model is loaded and made fast: used only by session.py (imports torch lazily).

`load_model` returns a ready, eval-mode model; `QUANTIZE_CHOICES` lists what
`--quantize` accepts.

`--quantize none`: `from_pretrained` with safetensors. transformers maps the
file (zero copy), so loading costs about one read of the weights file from the
page cache. On the CPU one thing changes: the language model's attention for
one new token per sequence (decode) runs as two matrix products instead of
sdpa's CPU kernel (`cpu_decode_attention`, 4-5x faster there, same float32
softmax); prefill and the vision tower stay on sdpa, so the prompt's logits are
bit-identical to stock transformers and decode differs only by rounding.

`--quantize int8` (CPU only, qwenvl/int8.py, its cache in qwenvl/int8_cache.py): loads bfloat16 (mapped), swaps
the linear layers for int8 ones (from the int8 cache, or quantized from the
file), then, when the dtype asked for is float32 (CPUs without native bf16),
makes the rest float32 (`compute_in_float32`, qwenvl/int8_float32.py).
"""
from __future__ import annotations

from .int8 import (  # noqa: F401 (the int8 names callers and tests use)
    INT8_DECODE_MAX_ROWS,
    TORCHAO_PIN,
    Int8Linear,
    _quantize_rows,
    check_int8_possible,
    int8_linear_names,
    quantize_int8,
)
from .int8_float32 import compute_in_float32  # noqa: F401
from .int8_cache import int8_cache_file, load_or_quantize_int8, start_packing  # noqa: F401
from .weights import WeightReader, _WeightReader  # noqa: F401

QUANTIZE_CHOICES = ("none", "int8")


def load_model(path: str, dtype: str, device: str, quantize: str = "none", log=lambda s: None, packing=None):
    """The model, ready. `packing`: the int8 cache's packing from `start_packing` (closed here)."""
    try:
        return _load_model(path, dtype, device, quantize, log, packing)
    finally:
        if packing is not None:
            packing.close()


def _load_model(path, dtype, device, quantize, log, packing):
    import torch
    from transformers import AutoModelForImageTextToText

    from .errors import ModelError

    if quantize not in QUANTIZE_CHOICES:
        raise ModelError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "int8":
        check_int8_possible(device)

    # int8 loads bfloat16 (mapped, zero copy) whatever the compute dtype: the
    # linear weights are replaced before they are ever read
    load_dtype = "bfloat16" if quantize == "int8" and dtype == "float32" else dtype
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=getattr(torch, load_dtype),
        device_map=device if device != "cpu" else None,
        use_safetensors=True,
        trust_remote_code=False,
    ).eval()
    if quantize == "int8":
        load_or_quantize_int8(model, path, log, dtype, packing)
        if dtype == "float32":
            compute_in_float32(model, path)
    if device == "cpu":
        use_cpu_decode_attention(model)
    return model


# --- attention for CPU decoding ------------------------------------------------

CPU_ATTENTION = "qwenvl_cpu_decode"


def cpu_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The language model's attention on the CPU: matrix products for one new token, sdpa otherwise.

    At decode (one query row per sequence) PyTorch's CPU sdpa kernel costs
    about 1.1 ms per layer for a 500-token cache on 2 cores (4.6 ms for 2000),
    where two grouped matrix products (float32 scores and softmax, as sdpa)
    take about 0.25 ms (0.9 ms): 25 ms of every token's 28 layers.
    Prefill (many query rows) stays on sdpa's flash kernel, which is faster there.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (query.shape[2] != 1 or query.device.type != "cpu" or dropout or kwargs.get("output_attentions")
            or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    import torch

    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads  # query head i reads key/value head i // groups (as repeat_kv)
    scale = dim ** -0.5 if scaling is None else scaling
    q = query.reshape(batch, kv_heads, groups, dim)
    # float32 scores, bfloat16 probabilities times bfloat16 values: the rounding of sdpa's CPU kernel
    scores = torch.matmul(q.float(), key.transpose(-1, -2).float()) * scale  # (batch, kv_heads, groups, kv_len)
    if attention_mask is not None:
        rows = attention_mask.shape[0]  # batch, or 1 when broadcast
        mask = attention_mask[..., -kv_len:].reshape(rows, -1, 1, kv_len)  # (rows, 1|heads, 1, kv_len)
        if mask.shape[1] != 1:
            mask = mask.reshape(rows, kv_heads, groups, kv_len)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (batch, kv_heads, groups, dim)
    return out.reshape(batch, 1, heads, dim), None


def use_cpu_decode_attention(model) -> bool:
    """Route the language model's attention through `cpu_decode_attention` (sdpa models only)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    text_config = getattr(model.config, "text_config", None)
    if text_config is None or getattr(text_config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(CPU_ATTENTION, cpu_decode_attention)
    AttentionMaskInterface.register(CPU_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    text_config._attn_implementation = CPU_ATTENTION
    return True
