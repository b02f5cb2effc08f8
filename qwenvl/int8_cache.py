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
import math
import os
import struct
import threading
from pathlib import Path

from . import int8 as _int8
from .heap import trim as _trim_heap
from .weights import _SAFETENSORS_NAMES, WeightReader
from .int8 import (
    Int8Linear,
    _int8_linear,
    _int8_tensor,
    _mark_int8,
    _template,
    choose_kernel,
    int8_linear_names,
    quantize_int8,
    release_freed_memory,
)

INT8_CACHE_FORMAT = 2  # 2: the vision tower's linears too
# fbgemm packing of the cache gives freed memory back to the OS once per this many bytes packed (`Packing`)
PACKING_TRIM_BYTES = 128 << 20


def int8_cache_file(path: str) -> Path | None:
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        torchao_version = version("torchao")  # not imported: reading fbgemm's cache does not need it
    except PackageNotFoundError:
        torchao_version = "none"

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
    digest.update(f"{INT8_CACHE_FORMAT}|{layers}|{torch.__version__}|{torchao_version}".encode())
    if setting:
        root = Path(setting).expanduser()
    else:
        root = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "qwenvl-int8"
    return root / f"{Path(path).name or 'model'}-{digest.hexdigest()[:20]}.safetensors"


def load_or_quantize_int8(model, path: str, log=lambda s: None, dtype: str = "bfloat16",
                          packing: "Packing | None" = None) -> int:
    """Int8 weights from the cache when a valid one exists, else quantize and (try to) cache them.

    `dtype`: the activations' dtype, which decides the kernel (`choose_kernel`).
    `packing`: the cache's fbgemm packing, started earlier by `start_packing` (taken and closed here).
    """
    kernel = choose_kernel(dtype)
    cache = int8_cache_file(path)
    if packing is not None and (kernel != "fbgemm" or cache is None or not cache.is_file()):
        packing.close()
        packing = None
    if cache is not None and cache.is_file():
        try:
            count = _load_int8_cache(model, cache, kernel, packing)
            log(f"int8: weights from {cache}")
            return count
        except Exception as exc:  # a torn or foreign file: quantize again and replace it
            log(f"warning: ignoring int8 cache {cache} ({type(exc).__name__}: {exc}); quantizing again")
    import time

    t0 = time.perf_counter()
    count = _in_a_thread_of_its_own(quantize_int8, model, path, kernel)
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


def _in_a_thread_of_its_own(work, *args):
    """work(*args) in a new thread with torch's thread count; returns its result or raises its error.

    glibc gives each thread its own heap (arena): quantizing in the main thread
    left the main heap fragmented, and generation then grew it by 0.2-0.35 GB
    more than after a load from the cache (first-run peak 3.53-3.71 GB over five
    runs against 3.34-3.37 GB over four with the quantization in its own thread,
    2B model, emulated AVX2 CPU). A daemon: an interrupted load does not wait for it.
    """
    import torch

    threads, outcome = torch.get_num_threads(), {}

    def run():
        try:
            torch.set_num_threads(threads)  # a new thread starts from OpenMP's default, not this count
            outcome["result"] = work(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="qwenvl-quantize", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


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
                # a block of rows at a time: the lm_head unpacked whole, and its blocks, held 0.6 GB
                # at once and set the first run's peak (3.63 GB on emulated AVX2)
                for qdata in m.int8_row_blocks():
                    f.write(memoryview(qdata.contiguous().reshape(-1).view(torch.uint8).numpy()))
                    del qdata
                f.write(memoryview(m.row_scale_f32.float().contiguous().reshape(-1).view(torch.uint8).numpy()))
        os.replace(tmp, cache)
    finally:
        if tmp.exists():
            tmp.unlink()
    release_freed_memory()


def _load_int8_cache(model, cache: Path, kernel: str | None = None, packing: "Packing | None" = None) -> int:
    """Int8 layers from the cache. For torchao's kernels the int8 rows are mapped (zero copy);
    fbgemm packs its own copy, read with plain reads (not resident twice) in background
    threads (`Packing`, started here unless the caller started it earlier)."""
    kernel = kernel or choose_kernel("bfloat16")
    linears = {name: model.get_submodule(name) for name in int8_linear_names(model)}
    source = (packing or Packing(cache)) if kernel == "fbgemm" else _MappedCache(cache)
    try:
        if source.metadata.get("format") != f"qwenvl-int8-{INT8_CACHE_FORMAT}":
            raise ValueError("not a qwenvl int8 cache of this format")
        keys = set(source.entries)
        missing = {name + key for name in linears for key in (".qdata", ".scale")} - keys
        if missing:
            raise ValueError(f"{sorted(missing)[0]}: missing from the cache")
        if len(keys) > 2 * len(linears):
            raise ValueError(f"{len(keys) - 2 * len(linears)} tensors the model does not have")
        for name, linear in linears.items():
            if source.shape(name) != ((linear.out_features, linear.in_features), linear.out_features):
                raise ValueError(f"{name}: its shape or dtype differs from the model")
        layers = {name: source.layer(name, linear, kernel) for name, linear in linears.items()}
    finally:
        source.close()
    for name, layer in layers.items():  # all checked: only now change the model
        model.set_submodule(name, layer)
    _mark_int8(model)
    _trim_heap()  # no gc.collect (0.2 s of the load): the layers replaced have no reference cycles
    return len(layers)


def _layer_shape(entries: dict, name: str):
    """((rows, columns), scale rows) of a cached layer as its header says; (None, None) when not int8/float32."""
    qdata, scale = entries[name + ".qdata"][2], entries[name + ".scale"][2]
    if qdata["dtype"] != "I8" or scale["dtype"] != "F32" or len(qdata["shape"]) != 2:
        return None, None
    return tuple(qdata["shape"]), scale["shape"][0]


class _MappedCache:
    """The cache for torchao's kernels: int8 rows mapped from the file (zero copy)."""

    def __init__(self, cache: Path):
        from safetensors import safe_open

        self.handle = safe_open(str(cache), "pt")
        header = WeightReader(str(cache), files=[cache])  # the header only
        self.metadata, self.entries = header.metadata, header.entries

    def shape(self, name: str):
        return _layer_shape(self.entries, name)

    def layer(self, name: str, linear, kernel: str):
        template = _template()
        qdata = self.handle.get_tensor(name + ".qdata")
        scale = self.handle.get_tensor(name + ".scale").to(template.scale.dtype)
        return _int8_linear(linear, _int8_tensor(qdata, scale, linear.weight.dtype, template), kernel)

    def close(self) -> None:
        self.handle = None


def load_threads() -> int:
    """Threads that pack fbgemm weights at once: torch's intra-op threads (packing itself uses one)."""
    import torch

    return max(1, min(torch.get_num_threads(), 16))


class Packing:
    """fbgemm's packing of every layer of an int8 cache file, in `load_threads()` background threads.

    fbgemm packs each weight on one thread, 2.4-2.6 ns per weight (about 4.5 s
    for the 2B model's language model on one core; the vision tower's layers are
    packed for onednn, 4-5x faster); packing releases the GIL, so it runs beside
    the loading of the processor and the model (single-threaded Python
    imports, mostly) and on every thread. Started before the model is built
    (`start_packing`), its layers are taken by `_load_int8_cache`. Largest
    layers first. A layer's rows are read with plain reads (page cache, not
    this process's memory) into one buffer per thread, a quantized tensor
    that fbgemm packs from as it is (`fbgemm_buffer`); onednn packs from its
    plain view.
    """

    def __init__(self, cache: Path):
        from concurrent.futures import ThreadPoolExecutor

        _int8.fbgemm_kernel()  # their one-time checks, before the threads
        _int8.onednn_kernel()
        self.reader = WeightReader(str(cache), files=[cache])
        self.metadata = self.reader.metadata
        self.entries = self.reader.entries
        names = [key.removesuffix(".qdata") for key in self.entries if key.endswith(".qdata")]
        names.sort(key=lambda n: -math.prod(self.entries[n + ".qdata"][2]["shape"]))
        self._lock = threading.Lock()
        self._local = threading.local()
        self._untrimmed = 0  # bytes packed since the last malloc_trim
        self._pool = ThreadPoolExecutor(max_workers=load_threads(), thread_name_prefix="qwenvl-int8")
        self._futures = {name: self._pool.submit(self._pack, name) for name in names}

    def shape(self, name: str):
        return _layer_shape(self.entries, name)

    def layer(self, name: str, linear, kernel: str = "fbgemm"):
        """The packed Int8Linear of `name` (waits for its packing; raises what packing raised)."""
        packed, scale = self._futures.pop(name).result()
        return Int8Linear.from_packed(linear, packed, scale, _int8.layer_kernel(name, kernel))

    def _pack(self, name: str):
        scale = self.reader.read(name + ".scale")
        rows, columns = self.entries[name + ".qdata"][2]["shape"]
        onednn = _int8.layer_kernel(name, "fbgemm") == "onednn"  # packed whole (cache-friendly already)
        block = rows if onednn else _int8.fbgemm_block_rows(rows, columns)
        packed = []
        for start in range(0, rows, block):  # a block at a time: the lm_head's rows are never all read at once
            # read into the thread's one buffer, not a new tensor per layer, and packed from where
            # the rows were read: onednn from the plain view, fbgemm from the quantized one
            quantized, raw = self._buffer(block * columns)
            qdata = self.reader.read(name + ".qdata", (start, start + block), into=raw)
            if qdata is None or scale is None:
                raise ValueError(f"{name}: cannot be read from the cache")
            packed.append(_int8.onednn_pack(qdata) if onednn
                          else _int8._fbgemm_pack(quantized[:qdata.numel()].view(qdata.shape)))
        # Holes freed between the packed weights stay in glibc's heap: when each block was first
        # copied into a quantized tensor, 0.5-1.4 GB above the final size by the end of the load.
        # A trim per layer cost 1 s of the load; one per PACKING_TRIM_BYTES packed bounds the
        # holes for a few trims (0.2 s; packing from the buffer left little for them to give back).
        with self._lock:
            self._untrimmed += rows * columns
            trim = self._untrimmed >= PACKING_TRIM_BYTES
            if trim:
                self._untrimmed %= PACKING_TRIM_BYTES
        if trim:
            _trim_heap()
        return packed, scale

    def _buffer(self, nbytes: int):
        """This thread's one read buffer (`fbgemm_buffer`: quantized, and plain over the same bytes),
        of at least `nbytes`."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer[1].numel() < nbytes:
            buffer = self._local.buffer = _int8.fbgemm_buffer(nbytes)
        return buffer

    def close(self) -> None:
        """Stop: drops what was not taken, waits for the running packs, closes the file."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
        self.reader.close()


def start_packing(path: str, dtype: str, device: str, quantize: str) -> Packing | None:
    """Start packing the int8 cache of `path` now (`Packing`) when the load ahead will use fbgemm and
    a cache exists; None otherwise, or on any trouble (the load then does all of it itself)."""
    if quantize != "int8" or device != "cpu":
        return None
    try:
        if choose_kernel(dtype) != "fbgemm":
            return None
        cache = int8_cache_file(path)
        if cache is None or not cache.is_file():
            return None
        return Packing(cache)
    except Exception:  # noqa: BLE001 (an optimisation only: the load reports real errors)
        return None
