"""The `--quantize int8` weight cache (reading single tensors: qwenvl/weights.py).

Quantizing the weights takes 15-60 s on 2 cores; the result is kept in one
safetensors file per checkpoint (about 2 GB for the 2B model) so that the
next run reads it instead. Key: the checkpoint's weight files (resolved path,
size, mtime), the layers int8 applies to, torch and torchao versions, the
format below. QWENVL_INT8_CACHE: unset -> $HF_HOME/qwenvl-int8
(~/.cache/huggingface/...), "0" -> no cache, anything else -> that folder.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from . import int8 as _int8
from .weights import _SAFETENSORS_NAMES, WeightReader
from .int8 import (
    Int8Linear,
    _int8_linear,
    _int8_tensor,
    _mark_int8,
    _template,
    _trim_heap,
    choose_kernel,
    int8_linear_names,
    quantize_int8,
    release_freed_memory,
)

INT8_CACHE_FORMAT = 2  # 2: the vision tower's linears too


def int8_cache_file(path: str) -> Path | None:
    import hashlib

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
    layers = f"{_int8.INT8_VISION}|{_int8.INT8_VISION_SKIP}"  # which layers are int8
    digest.update(f"{INT8_CACHE_FORMAT}|{layers}|{torch.__version__}|{torchao.__version__}".encode())
    if setting:
        root = Path(setting).expanduser()
    else:
        root = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "qwenvl-int8"
    return root / f"{Path(path).name or 'model'}-{digest.hexdigest()[:20]}.safetensors"


def load_or_quantize_int8(model, path: str, log=lambda s: None, dtype: str = "bfloat16") -> int:
    """Int8 weights from the cache when a valid one exists, else quantize and (try to) cache them.

    `dtype`: the activations' dtype, which decides the kernel (`choose_kernel`).
    """
    kernel = choose_kernel(dtype)
    cache = int8_cache_file(path)
    if cache is not None and cache.is_file():
        try:
            count = _load_int8_cache(model, cache, kernel)
            log(f"int8: weights from {cache}")
            return count
        except Exception as exc:  # a torn or foreign file: quantize again and replace it
            log(f"warning: ignoring int8 cache {cache} ({type(exc).__name__}: {exc}); quantizing again")
    import time

    t0 = time.perf_counter()
    count = quantize_int8(model, path, kernel)
    t1 = time.perf_counter()
    log(f"int8: quantized {count} linear layers in {t1 - t0:.1f} s")
    if cache is not None:
        try:
            _save_int8_cache(model, cache)
            log(f"int8: weights cached in {cache} in {time.perf_counter() - t1:.1f} s "
                "(next load reads them; QWENVL_INT8_CACHE=0 turns this off)")
        except OSError as exc:
            log(f"warning: cannot cache int8 weights in {cache}: {exc.strerror or exc}")
    return count


def _save_int8_cache(model, cache: Path) -> None:
    """Write the int8 weights as one safetensors file, streamed layer by layer, atomically.

    (safetensors.torch.save_file first builds the whole file in memory; with
    fbgemm each layer's int8 rows are unpacked, written and freed in turn.)
    """
    import torch

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, Int8Linear)]
    header, offset = {"__metadata__": {"format": f"qwenvl-int8-{INT8_CACHE_FORMAT}"}}, 0
    for name, m in layers:
        for key, shape, dtype, size in ((".qdata", [m.out_features, m.in_features], "int8",
                                         m.out_features * m.in_features),
                                        (".scale", [m.out_features], "float32", m.out_features * 4)):
            header[name + key] = {"dtype": _SAFETENSORS_NAMES[dtype], "shape": shape,
                                  "data_offsets": [offset, offset + size]}
            offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for _, m in layers:
                qdata, scale = m.int8_data()
                f.write(memoryview(qdata.contiguous().reshape(-1).view(torch.uint8).numpy()))
                f.write(memoryview(scale.float().contiguous().reshape(-1).view(torch.uint8).numpy()))
                del qdata, scale
        os.replace(tmp, cache)
    finally:
        if tmp.exists():
            tmp.unlink()
    release_freed_memory()


def _load_int8_cache(model, cache: Path, kernel: str | None = None) -> int:
    """Int8 layers from the cache. For torchao's kernels the int8 rows are mapped (zero copy);
    fbgemm packs its own copy, so for it they are read with plain reads (not resident twice)."""
    import torch
    from safetensors import safe_open

    kernel = kernel or choose_kernel("bfloat16")
    names = int8_linear_names(model)
    template = _template()
    layers = {}
    if kernel == "fbgemm":
        source = WeightReader(str(cache), files=[cache])
        metadata, keys, get, close = source.metadata, set(source.entries), source.read, source.close
    else:
        handle = safe_open(str(cache), "pt")
        metadata, keys, close = handle.metadata() or {}, set(handle.keys()), (lambda: None)

        def get(key):
            return handle.get_tensor(key) if key in keys else None
    try:
        if metadata.get("format") != f"qwenvl-int8-{INT8_CACHE_FORMAT}":
            raise ValueError("not a qwenvl int8 cache of this format")
        for name in names:
            linear = model.get_submodule(name)
            qdata, scale = get(name + ".qdata"), get(name + ".scale")
            if (qdata is None or scale is None or qdata.dtype != torch.int8
                    or tuple(qdata.shape) != (linear.out_features, linear.in_features)
                    or scale.shape[0] != linear.out_features):
                raise ValueError(f"{name}: missing, or its shape or dtype differs from the model")
            keys -= {name + ".qdata", name + ".scale"}
            scale = scale.to(template.scale.dtype)
            layers[name] = _int8_linear(linear, _int8_tensor(qdata, scale, linear.weight.dtype, template), kernel)
            del qdata, scale
            if kernel == "fbgemm":
                _trim_heap()
        if keys:
            raise ValueError(f"{len(keys)} tensors the model does not have")
    finally:
        close()
    for name, layer in layers.items():  # all checked: only now change the model
        model.set_submodule(name, layer)
    _mark_int8(model)
    release_freed_memory()
    return len(layers)
