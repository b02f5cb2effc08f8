"""How the model is loaded and made fast: used only by session.py (imports torch lazily).

`load_model` returns a ready, eval-mode model; `QUANTIZE_CHOICES` lists what
`--quantize` accepts.

bf16 (`--quantize none`): `from_pretrained` with safetensors. transformers
maps the file (zero copy), so loading costs about one read of the weights file
from the page cache. On the CPU one thing changes: the language model's
attention for one new token per sequence (decode) runs as two matrix products
instead of sdpa's CPU kernel (`cpu_decode_attention`, 4-5x faster there, same
float32 softmax); prefill and the vision tower stay on sdpa, so the prompt's
logits are bit-identical to stock transformers and decode differs only by
rounding (bench/speed.py measures both; README "Performance").

int8 (`--quantize int8`, CPU only): every linear layer of the language model
(q/k/v/o, gate/up/down of the 28 decoder layers, and the lm_head) gets int8
weights with one scale per output row, made by torchao (`Int8Tensor`,
`Int8DynamicActivationInt8WeightConfig`, per-row symmetric). The vision tower,
the embeddings and the norms stay in the load dtype. Each weight is read from
the safetensors file with plain reads and quantized at once, so the bf16 copy
of the language model is never resident (peak memory stays near the int8 size).
At run time an `Int8Linear` picks the kernel by the number of rows:
  * decode (few rows): int8 weight-only matrix-vector product
    (`torch.ops.aten._weight_int8pack_mm`: bf16 activations, int8 weights,
    reads half the bytes of bf16: decode is bound by memory bandwidth);
  * prefill (many rows): dynamic per-token int8 activations x int8 weights,
    torchao's scheme, on `torch._int_mm` (VNNI): about 1.6x the bf16 product.
Each weight's temporaries go back to the OS as soon as it is quantized
(`_trim_heap`), so loading peaks near the final int8 size.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

QUANTIZE_CHOICES = ("none", "int8")

# Rows (batch x new tokens) up to which an int8 linear uses the weight-only
# matrix-vector kernel; above it, the int8 x int8 matrix product (prefill).
INT8_DECODE_MAX_ROWS = 16

TORCHAO_PIN = "torchao==0.18.0"


def load_model(path: str, dtype: str, device: str, quantize: str = "none", log=lambda s: None):
    import torch
    from transformers import AutoModelForImageTextToText

    from .errors import ModelError

    if quantize not in QUANTIZE_CHOICES:
        raise ModelError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "int8":
        _check_int8_possible(device)

    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=getattr(torch, dtype),
        device_map=device if device != "cpu" else None,
        use_safetensors=True,
        trust_remote_code=False,
    ).eval()
    if quantize == "int8":
        load_or_quantize_int8(model, path, log)
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


# --- int8 --------------------------------------------------------------------


def _check_int8_possible(device: str) -> None:
    from .errors import ModelError

    if device != "cpu":
        raise ModelError(
            f"--quantize int8 runs on the CPU only (int8 CPU kernels); on --device {device} "
            "use --quantize none (bf16/fp16 on the GPU is faster and exact), or pass --device cpu"
        )
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ModelError(
            f"--quantize int8 needs the torchao package: pip install {TORCHAO_PIN} "
            "(it is in requirements.txt)"
        ) from None


def int8_linear_names(model) -> list[str]:
    """The linear layers int8 applies to: the language model's and the lm_head."""
    import torch

    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if ".language_model." in f".{name}." or name == "lm_head":
            names.append(name)
    return names


# --- the int8 weight cache ------------------------------------------------------
#
# Quantizing the 197 weights takes about 14 s on 2 cores; the result is kept
# in one safetensors file per checkpoint (1.7 GB for the 2B model) so that the
# next run maps it instead (about 1 s). Key: the checkpoint's weight files
# (resolved path, size, mtime), torch and torchao versions, the format below.
# QWENVL_INT8_CACHE: unset -> $HF_HOME/qwenvl-int8 (~/.cache/huggingface/...),
# "0" -> no cache, anything else -> that folder.

INT8_CACHE_FORMAT = 1


def int8_cache_file(path: str) -> Path | None:
    import hashlib
    import os

    import torch
    import torchao

    setting = os.environ.get("QWENVL_INT8_CACHE", "")
    if setting.strip().lower() in ("0", "off", "no", "false"):
        return None
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        st = file.stat()
        digest.update(f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    digest.update(f"{INT8_CACHE_FORMAT}|{torch.__version__}|{torchao.__version__}".encode())
    if setting:
        root = Path(setting).expanduser()
    else:
        root = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "qwenvl-int8"
    return root / f"{Path(path).name or 'model'}-{digest.hexdigest()[:20]}.safetensors"


def load_or_quantize_int8(model, path: str, log=lambda s: None) -> int:
    """Int8 weights from the cache when a valid one exists, else quantize and (try to) cache them."""
    cache = int8_cache_file(path)
    if cache is not None and cache.is_file():
        try:
            count = _load_int8_cache(model, cache)
            log(f"int8: weights from {cache}")
            return count
        except Exception as exc:  # a torn or foreign file: quantize again and replace it
            log(f"warning: ignoring int8 cache {cache} ({type(exc).__name__}: {exc}); quantizing again")
    import time

    t0 = time.perf_counter()
    count = quantize_int8(model, path)
    t1 = time.perf_counter()
    log(f"int8: quantized {count} linear layers in {t1 - t0:.1f} s")
    if cache is not None:
        try:
            _save_int8_cache(model, cache)
            log(f"int8: weights cached in {cache} in {time.perf_counter() - t1:.1f} s "
                "(next load maps them; QWENVL_INT8_CACHE=0 turns this off)")
        except OSError as exc:
            log(f"warning: cannot cache int8 weights in {cache}: {exc.strerror or exc}")
    return count


# safetensors dtype names of the float weights _WeightReader reads; the cache adds int8
_SAFETENSORS_FLOATS = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_SAFETENSORS_NAMES = {"int8": "I8", **{torch_name: st for st, torch_name in _SAFETENSORS_FLOATS.items()}}


def _save_int8_cache(model, cache: Path) -> None:
    """Write the int8 weights as one safetensors file, streamed tensor by tensor, atomically.

    (safetensors.torch.save_file first builds the whole 1.7 GB file in memory.)
    """
    import os

    import torch

    tensors = []
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            tensors.append((name + ".qdata", module._qdata.contiguous()))
            tensors.append((name + ".scale", module.weight.scale.contiguous()))
    header, offset = {"__metadata__": {"format": f"qwenvl-int8-{INT8_CACHE_FORMAT}"}}, 0
    for key, t in tensors:
        size = t.numel() * t.element_size()
        header[key] = {"dtype": _SAFETENSORS_NAMES[str(t.dtype).removeprefix("torch.")],
                       "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for _, t in tensors:
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        os.replace(tmp, cache)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_int8_cache(model, cache: Path) -> int:
    import torch
    from safetensors import safe_open
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    names = int8_linear_names(model)
    template = _quantize_rows(torch.zeros(1, 8, dtype=torch.bfloat16),
                              Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    layers = {}
    with safe_open(str(cache), "pt") as f:
        if (f.metadata() or {}).get("format") != f"qwenvl-int8-{INT8_CACHE_FORMAT}":
            raise ValueError("not a qwenvl int8 cache of this format")
        keys = set(f.keys())
        for name in names:
            linear = model.get_submodule(name)
            qdata, scale = f.get_tensor(name + ".qdata"), f.get_tensor(name + ".scale")
            if (qdata.dtype != torch.int8 or tuple(qdata.shape) != (linear.out_features, linear.in_features)
                    or scale.shape[0] != linear.out_features):
                raise ValueError(f"{name}: shape or dtype differs from the model")
            keys -= {name + ".qdata", name + ".scale"}
            layers[name] = _int8_linear(linear, _int8_tensor(qdata, scale, linear.weight.dtype, template))
        if keys:
            raise ValueError(f"{len(keys)} tensors the model does not have")
    for name, layer in layers.items():  # all checked: only now change the model
        model.set_submodule(name, layer)
    _mark_int8(model)
    return len(layers)


def quantize_int8(model, path: str | None = None) -> int:
    """Replace the language model's linear layers by Int8Linear; returns how many."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    reader = _WeightReader(path) if path else None
    tied = _tied_source(model)
    count = 0
    names = int8_linear_names(model)
    names.sort(key=lambda n: n != "lm_head")  # the largest first, while little else is allocated
    try:
        for name in names:
            linear = model.get_submodule(name)
            dtype = linear.weight.dtype
            weight = None
            if reader is not None:
                weight = reader.read(name + ".weight")
                if weight is None and name == "lm_head" and tied:
                    weight = reader.read(tied)
            if weight is None:  # not in the file under that name: the loaded tensor
                weight = linear.weight.detach()
            model.set_submodule(name, _int8_linear(linear, _quantize_rows(weight.to(dtype), config)))
            del linear, weight
            _trim_heap()  # the bf16 read and torchao's float32 temporaries: back to the OS now
            count += 1
    finally:
        if reader is not None:
            reader.close()
    _mark_int8(model)
    _release_freed_memory()
    return count


def _mark_int8(model) -> None:
    if isinstance(getattr(model, "lm_head", None), Int8Linear):
        # the lm_head is no longer the embedding matrix: do not let anyone re-tie them
        model.config.tie_word_embeddings = False
        text_config = getattr(model.config, "text_config", None)
        if text_config is not None:
            text_config.tie_word_embeddings = False
    model.qwenvl_quantize = "int8"


# Rows quantized at once: torchao works in float32, so a whole lm_head (151936
# rows) would need several GB of temporaries. Per-row scales make the result
# identical to quantizing the whole matrix at once.
QUANTIZE_CHUNK_ROWS = 4096


def _quantize_rows(weight, config, chunk_rows: int | None = None):
    """torchao's Int8Tensor (per-row int8 + scales) for `weight`, made a block of rows at a time."""
    import torch
    from torchao.quantization import quantize_

    chunk_rows = chunk_rows or QUANTIZE_CHUNK_ROWS
    rows, cols = weight.shape
    qdata = scale = first = None
    for start in range(0, rows, chunk_rows):
        part = weight[start:start + chunk_rows]
        block = torch.nn.Linear(cols, part.shape[0], bias=False, device="meta")
        block.weight = torch.nn.Parameter(part.contiguous(), requires_grad=False)
        quantize_(block, config)
        q = block.weight
        if rows <= chunk_rows:
            return q
        if first is None:
            first = q
            qdata = torch.empty((rows, cols), dtype=q.qdata.dtype)
            scale = torch.empty((rows, *q.scale.shape[1:]), dtype=q.scale.dtype)
        qdata[start:start + part.shape[0]] = q.qdata
        scale[start:start + part.shape[0]] = q.scale
        del block, q
    return _int8_tensor(qdata, scale, first.dtype, first)


def _int8_tensor(qdata, scale, dtype, like):
    """A torchao Int8Tensor over per-row int8 data and scales, with the activation settings of `like`."""
    from torchao.quantization import Int8Tensor

    return Int8Tensor(qdata, scale, [1, qdata.shape[1]], dtype, act_quant_kwargs=like.act_quant_kwargs,
                      reduce_range=getattr(like, "reduce_range", False))


def _int8_linear(linear, weight) -> "Int8Linear":
    """An Int8Linear with `linear`'s shape and bias and the int8 `weight` (a torchao Int8Tensor)."""
    import torch

    fresh = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    fresh.weight = torch.nn.Parameter(weight, requires_grad=False)
    if linear.bias is not None:
        fresh.bias = torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
    return Int8Linear(fresh)


def _release_freed_memory() -> None:
    """Give the quantization temporaries back to the OS (glibc keeps freed heap otherwise)."""
    import gc

    gc.collect()
    _trim_heap()


_LIBC = []


def _trim_heap() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS (a no-op elsewhere).

    Freed tensors of a few MB stay in glibc's heap, counted in the resident
    set, and the holes they leave between live tensors are rarely reused
    whole: without this, quantizing 197 weights one after another peaked at
    2 GB above the final size (bench/speed.py, int8 peak RSS 4.8 GB).
    """
    if not _LIBC:
        import ctypes

        try:
            _LIBC.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0](0)


def _tied_source(model) -> str | None:
    """The checkpoint name of the embedding matrix the lm_head shares (tied weights)."""
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    head = getattr(model, "lm_head", None)
    if head is None or emb is None or head.weight.data_ptr() != emb.weight.data_ptr():
        return None
    for name, module in model.named_modules():
        if module is emb:
            return name + ".weight"
    return None


try:
    import torch as _torch

    _Module = _torch.nn.Module
except ImportError:  # torch is imported lazily elsewhere; accel is only used with it
    _Module = object


class Int8Linear(_Module):
    """A linear layer with torchao int8 weights (per-row scales); kernel chosen by row count."""

    def __init__(self, quantized):
        import torch

        super().__init__()
        self.in_features = quantized.in_features
        self.out_features = quantized.out_features
        self.weight = quantized.weight  # torchao Int8Tensor parameter
        self.bias = quantized.bias
        qdata = self.weight.qdata
        # the weight-only kernel takes the scales in the activation dtype, the int8 x int8 path in float32
        self.register_buffer("row_scale", self.weight.scale.reshape(-1).to(torch.bfloat16), persistent=False)
        self.register_buffer("row_scale_f32", self.weight.scale.reshape(-1).float(), persistent=False)
        self._qdata = qdata
        self._int_mm_ok = self.in_features % 8 == 0 and self.out_features % 8 == 0

    def forward(self, x):
        import torch

        rows = x.numel() // self.in_features
        if x.dtype != torch.bfloat16 or x.device.type != "cpu":
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        if rows <= INT8_DECODE_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self._qdata, self.row_scale)
        elif self._int_mm_ok:
            y = self._int8_matmul(flat)
        else:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _int8_matmul(self, x):
        """Dynamic per-token int8 activations x int8 weights (`torch._int_mm`), rescaled to bfloat16.

        The scheme of torchao's Int8DynamicActivationInt8WeightConfig (symmetric,
        one scale per token and per output row), written out so that the int8
        product runs on PyTorch's VNNI kernel directly: 18 ms for a 499x2048 by
        2048x6144 product here, where torchao's eager path takes 37 ms and bf16 30.
        """
        import torch

        x_scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min_(1e-5).div_(127.0)
        xq = (x.float() / x_scale).round_().clamp_(-128, 127).to(torch.int8)
        y = torch._int_mm(xq, self._qdata.t())
        return y.float().mul_(x_scale).mul_(self.row_scale_f32).to(torch.bfloat16)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row (torchao)"


class _WeightReader:
    """Reads single tensors of a safetensors checkpoint with plain reads (no mmap).

    Reading with read() leaves the bytes in the page cache, not in this
    process's resident set: quantizing from it keeps peak memory low.
    """

    def __init__(self, path: str):
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        self.files: dict[Path, object] = {}
        root = Path(path)
        index = root / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            shards = [p.name for p in sorted(root.glob("*.safetensors"))]
        for shard in shards:
            file = root / shard
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            base = 8 + size
            for key, info in header.items():
                if key != "__metadata__":
                    self.entries[key] = (file, base, info)

    def read(self, key: str | None):
        import torch

        if not key or key not in self.entries:
            return None
        file, base, info = self.entries[key]
        dtype = _SAFETENSORS_FLOATS.get(info["dtype"])
        if dtype is None:
            return None
        start, end = info["data_offsets"]
        out = torch.empty(info["shape"], dtype=getattr(torch, dtype))
        view = memoryview(out.view(torch.uint8).reshape(-1).numpy())
        if view.nbytes != end - start:
            return None
        f = self.files.get(file)
        if f is None:
            f = self.files[file] = open(file, "rb", buffering=0)
        f.seek(base + start)
        done = 0
        while done < view.nbytes:
            n = f.readinto(view[done:])
            if not n:
                return None
            done += n
        return out

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
