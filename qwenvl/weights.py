"""Reading single tensors of safetensors files with plain reads (imports torch lazily).

Used to quantize weights one at a time (qwenvl/int8.py) and to read the int8
cache (qwenvl/int8_cache.py) without mapping whole files into memory.
"""
from __future__ import annotations

import json
import math
import struct
import threading
from pathlib import Path

# safetensors dtype names of the tensors WeightReader reads
_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "I8": "int8"}
_SAFETENSORS_NAMES = {torch_name: st for st, torch_name in _SAFETENSORS_DTYPES.items()}


class WeightReader:
    """Reads single tensors of safetensors files with plain reads (no mmap).

    Reading with read() leaves the bytes in the page cache, not in this
    process's resident set: quantizing from it keeps peak memory low.
    `read` may be called from several threads (each has its own file handles).
    """

    def __init__(self, path: str, files: list[Path] | None = None):
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        self._local = threading.local()
        self._opened: list = []
        self._lock = threading.Lock()
        self.metadata: dict = {}
        root = Path(path)
        if files is None:
            index = root / "model.safetensors.index.json"
            if index.is_file():
                files = [root / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
            else:
                files = sorted(root.glob("*.safetensors"))
        for file in files:
            with open(file, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            base = 8 + size
            self.metadata.update(header.pop("__metadata__", None) or {})
            for key, info in header.items():
                self.entries[key] = (file, base, info)

    def read(self, key: str | None, rows: tuple[int, int] | None = None, into=None):
        """The tensor `key` (None when absent or of another dtype); `rows`: only rows [start, stop).

        `into`: read into the first bytes of this flat one-byte tensor (None
        when it is too small), for bytes that are copied at once, such as the
        int8 cache's packing: one buffer reused, no allocation per tensor, so
        no freed holes in the heap to hand back to the OS.
        """
        import torch

        if not key or key not in self.entries:
            return None
        file, base, info = self.entries[key]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            return None
        start, end = info["data_offsets"]
        shape = list(info["shape"])
        if rows is not None:
            row_bytes = (end - start) // max(shape[0], 1)
            first, stop = max(0, rows[0]), min(shape[0], rows[1])
            start, end, shape[0] = start + first * row_bytes, start + stop * row_bytes, stop - first
        dtype = getattr(torch, dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != end - start:
            return None
        if into is not None:
            if into.numel() < nbytes or into.element_size() != 1:
                return None
            out = into[:nbytes].view(dtype).reshape(shape)
        else:
            out = torch.empty(shape, dtype=dtype)
        view = memoryview(out.view(torch.uint8).reshape(-1).numpy())
        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = {}
        f = files.get(file)
        if f is None:
            f = files[file] = open(file, "rb", buffering=0)
            with self._lock:
                self._opened.append(f)
        f.seek(base + start)
        done = 0
        while done < view.nbytes:
            n = f.readinto(view[done:])
            if not n:
                return None
            done += n
        return out

    def close(self) -> None:
        with self._lock:
            for f in self._opened:
                f.close()
            self._opened.clear()
        self._local = threading.local()


_WeightReader = WeightReader  # the name tests and older callers use
