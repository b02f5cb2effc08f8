"""Reading single tensors of safetensors files with plain reads (imports torch lazily).

Used to quantize weights one at a time (qwenvl/int8.py) and to read the int8
cache (qwenvl/int8_cache.py) without mapping whole files into memory.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

# safetensors dtype names of the tensors WeightReader reads
_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "I8": "int8"}
_SAFETENSORS_NAMES = {torch_name: st for st, torch_name in _SAFETENSORS_DTYPES.items()}


class WeightReader:
    """Reads single tensors of safetensors files with plain reads (no mmap).

    Reading with read() leaves the bytes in the page cache, not in this
    process's resident set: quantizing from it keeps peak memory low.
    """

    def __init__(self, path: str, files: list[Path] | None = None):
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        self.files: dict[Path, object] = {}
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

    def read(self, key: str | None):
        import torch

        if not key or key not in self.entries:
            return None
        file, base, info = self.entries[key]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
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


_WeightReader = WeightReader  # the name tests and older callers use
