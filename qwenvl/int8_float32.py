"""Float32 activations around the int8 layers, for CPUs without native bfloat16 (fbgemm's kernels).

`--quantize int8` loads bfloat16 (mapped) and, when the dtype asked for is
float32, `compute_in_float32` makes the rest float32 in little memory: the
norms, convolution and small tables become float32, the embedding table stays
bf16, and the linears left in bf16 (the patch mergers) are multiplied in
float32 a block of rows at a time. `trim_between_layers` keeps the int8
path's peak memory down on any CPU (qwenvl/accel.py calls both).
"""
from __future__ import annotations

from .int8 import INT8_DECODE_MAX_ROWS, Int8Linear, _trim_heap, release_freed_memory

try:
    import torch as _torch

    _Module = _torch.nn.Module
except ImportError:  # torch is imported lazily elsewhere
    _Module = object


def trim_between_layers(model) -> None:
    """Give freed heap back to the OS after each vision block and each prefill decoder layer.

    glibc keeps the activations a layer frees (tens of MB at 500-2000 tokens)
    for reuse, and their holes add up: without this the int8 path's peak was
    0.1-0.3 GB higher (3.4-3.6 GB on the 2B model, bench/speed.py). malloc_trim
    takes about a millisecond; decode steps (few rows) skip it.
    """
    inner = getattr(model, "model", None)
    visual = getattr(inner, "visual", None)

    def after_block(mod, args, out):
        _trim_heap()

    def after_layer(mod, args, out):
        hidden = args[0] if args else None
        if hidden is not None and hidden.dim() == 3 and hidden.shape[1] > INT8_DECODE_MAX_ROWS:
            _trim_heap()

    for block in getattr(visual, "blocks", []):
        block.register_forward_hook(after_block)
    for layer in getattr(getattr(inner, "language_model", None), "layers", []):
        layer.register_forward_hook(after_layer)


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
    release_freed_memory()


class FileBf16Linear(_Module):
    """A Linear whose bfloat16 weight stays in the checkpoint file: each call reads it
    BF16_STORED_ROWS rows at a time (plain reads, from the page cache) and multiplies
    in the input's dtype.

    For the patch mergers on CPUs without native bf16: kept mapped, their 0.2 GB
    became resident with the first image, most of the int8 path's margin under
    3.5 GB; reading them costs about 0.05 s per image.
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
        import torch

        out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype)
        for i in range(0, self.out_features, BF16_STORED_ROWS):
            block = slice(i, i + BF16_STORED_ROWS)
            weight = self._reader.read(self._key, (i, i + BF16_STORED_ROWS))
            if weight is None:
                raise RuntimeError(f"cannot read {self._key} from the checkpoint any more")
            bias = None if self.bias is None else self.bias[block].to(x.dtype)
            out[..., block] = torch.nn.functional.linear(x, weight.to(x.dtype), bias)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 weight read from the file"


class Bf16StoredLinear(_Module if _Module is object else _torch.nn.Linear):
    """A Linear whose weight stays bfloat16 in memory and is multiplied in the input's dtype,
    BF16_STORED_ROWS output rows at a time (a float32 copy of a whole merger weight is 67 MB)."""

    def forward(self, x):
        import torch

        rows = self.weight.shape[0]
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x.dtype == self.weight.dtype or rows <= BF16_STORED_ROWS:
            return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)
        out = torch.empty(*x.shape[:-1], rows, dtype=x.dtype)
        for i in range(0, rows, BF16_STORED_ROWS):
            block = slice(i, i + BF16_STORED_ROWS)
            out[..., block] = torch.nn.functional.linear(
                x, self.weight[block].to(x.dtype), None if bias is None else bias[block])
        return out


BF16_STORED_ROWS = 1024
