"""Float32 activations around the int8 layers, for CPUs without native bfloat16 (fbgemm's kernels).

`--quantize int8` loads bfloat16 (mapped) and, when the dtype asked for is
float32, `compute_in_float32` makes the rest float32 in little memory: the
norms, convolution and small tables become float32, the embedding table stays
bf16, and the linears left in bf16 (the patch mergers) are multiplied in
float32 a block of rows at a time (qwenvl/accel.py calls it).
"""
from __future__ import annotations

from .heap import trim as _trim_heap
from .int8 import Int8Linear

try:
    import torch as _torch

    _Module = _torch.nn.Module
except ImportError:  # torch is imported lazily elsewhere
    _Module = object


def compute_in_float32(model, path: str | None = None) -> None:
    """Float32 activations around the int8 layers (CPUs without native bf16), in little memory.

    The norms, convolution and small tables become float32; the input
    embedding table stays bfloat16 (0.6 GB instead of 1.2) and its output is
    made float32. The linears left in bfloat16 (the patch mergers, 0.2 GB)
    are multiplied in float32 from their bf16 weights: read from the
    checkpoint file `path` at each call when it holds them in bf16
    (`FileBf16Linear`: never resident), else kept mapped (`Bf16StoredLinear`).
    """
    import torch

    from .weights import WeightReader

    emb = model.get_input_embeddings()
    keep = {id(p) for p in emb.parameters()}
    reader = WeightReader(path) if path else None
    from_file = {}
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16:
            key = name + ".weight"
            info = reader.entries.get(key) if reader is not None else None
            if info is not None and info[2]["dtype"] == "BF16" and list(info[2]["shape"]) == list(module.weight.shape):
                try:
                    from_file[name] = FileBf16Linear(module, reader, key)
                    continue
                except (OSError, ValueError):
                    pass  # not readable: keep it mapped
            module.__class__ = Bf16StoredLinear
            keep.add(id(module.weight))
        for key, p in list(module._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != torch.float32 and id(p) not in keep:
                module._parameters[key] = torch.nn.Parameter(p.detach().float(), requires_grad=False)
        for key, b in list(module._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != torch.float32:
                module._buffers[key] = b.float()
        if isinstance(module, Int8Linear):
            module.weight_dtype = torch.float32
    for name, layer in from_file.items():
        model.set_submodule(name, layer)
    emb.register_forward_hook(lambda mod, args, out: out.float())
    model.config.dtype = torch.float32
    _trim_heap()  # the bf16 copies of what became float32 (no gc.collect: no reference cycles, 0.2 s)


class FileBf16Linear(_Module):
    """A Linear whose bfloat16 weight stays in the checkpoint file: each call reads it
    BF16_STORED_ROWS rows at a time (plain reads, from the page cache) and multiplies
    in the input's dtype.

    For the patch mergers on CPUs without native bf16: kept mapped, their 0.2 GB
    became resident with the first image, most of the int8 path's margin under
    3.5 GB; reading them costs one read of 0.2 GB from the page cache per image.
    """

    def __init__(self, linear, reader, key: str):
        import torch

        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = (None if linear.bias is None
                     else torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False))
        self._reader, self._key = reader, key
        if reader.read(key, (0, 1)) is None:  # opens the file now (this thread's handle)
            raise ValueError(f"cannot read {key}")

    def forward(self, x):
        def rows(start, stop):
            weight = self._reader.read(self._key, (start, stop))
            if weight is None:
                raise RuntimeError(f"cannot read {self._key} from the checkpoint any more")
            return weight

        return _linear_in_row_blocks(x, self.out_features, rows, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 weight read from the file"


class Bf16StoredLinear(_Module if _Module is object else _torch.nn.Linear):
    """A Linear whose weight stays bfloat16 in memory and is multiplied in the input's dtype,
    BF16_STORED_ROWS output rows at a time."""

    def forward(self, x):
        if x.dtype == self.weight.dtype:
            return super().forward(x)
        return _linear_in_row_blocks(x, self.weight.shape[0], lambda start, stop: self.weight[start:stop], self.bias)


def _linear_in_row_blocks(x, out_features: int, weight_rows, bias):
    """x @ W.T + b in x's dtype, W's rows taken BF16_STORED_ROWS at a time from `weight_rows(start, stop)`."""
    import torch

    bias = None if bias is None else bias.to(x.dtype)
    if out_features <= BF16_STORED_ROWS:
        return torch.nn.functional.linear(x, weight_rows(0, out_features).to(x.dtype), bias)
    out = torch.empty(*x.shape[:-1], out_features, dtype=x.dtype)
    for i in range(0, out_features, BF16_STORED_ROWS):
        block = slice(i, i + BF16_STORED_ROWS)
        out[..., block] = torch.nn.functional.linear(
            x, weight_rows(i, i + BF16_STORED_ROWS).to(x.dtype), None if bias is None else bias[block])
    return out


BF16_STORED_ROWS = 4096  # a whole Qwen3-VL-2B merger weight (blocks of 1024 made the vision tower 0.7 s slower)
