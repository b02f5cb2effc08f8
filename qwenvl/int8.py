"""`--quantize int8` on the CPU: int8 layers and the kernel each kind of CPU runs fastest.

Which layers: every linear layer of the language model (q/k/v/o, gate/up/down
of each decoder layer, and the lm_head) and of the vision tower's blocks (qkv,
proj, the MLP). Weights get one int8 scale per output row (symmetric, made by
torchao's Int8DynamicActivationInt8WeightConfig). The patch mergers, the
embeddings, norms, convolution and position table keep the load dtype. Each
weight is read from the safetensors file with plain reads and quantized at
once, so the float copy is never resident. The int8 weight cache is in
qwenvl/int8_cache.py; the float32 layers around the int8 ones on CPUs without
native bf16 in qwenvl/int8_float32.py.

Kernels, per kind of CPU (bench/kernels.py measures them; docs/performance.md):
  * bfloat16 activations (CPUs with native bf16, where --dtype auto is
    bfloat16): the int8 weight-only matrix-vector product
    `torch.ops.aten._weight_int8pack_mm` for decode, and torchao's per-token
    int8 scheme on `torch._int_mm` for prefill; their int8 rows are mapped
    from the cache (no copy, 0.6 s to load).
  * float32 activations (CPUs without native bf16, e.g. AVX2-only, where
    --dtype auto is float32), x86: PyTorch's dynamic quantized linear
    (`quantized::linear_dynamic`, fbgemm), for prefill and decode alike (the
    weight-only kernel runs at about 1 GFLOP/s with float32 activations); each
    row of the activations is first scaled to max |x| = 1 (and the result
    back), which makes fbgemm's per-tensor activation scale a per-token one;
    without AVX-512 VNNI activations use 7 bits (`reduce_range`), as fbgemm
    requires there to avoid saturating 16-bit sums. Decode runs on every
    thread (see `Int8Linear._fbgemm`). fbgemm packs its weights at every load
    (about 4.5 s of CPU time for the 2B model's language model, in background
    threads from the start of the session: qwenvl/int8_cache.py): one packed
    copy serves prefill and decode. The vision tower's layers, which only
    ever multiply many rows, run on onednn's int8 product instead
    (`torch.ops.onednn.qlinear_pointwise`, PyTorch's x86 int8 path): as fast
    or faster there, and it packs 4-5x faster (`layer_kernel`).
  * no fbgemm (ARM64): the torchao kernels of the first case.
"""
from __future__ import annotations

import gc
import os

from .heap import trim as _trim_heap

# Rows (batch x new tokens) up to which bfloat16 activations use the weight-only
# matrix-vector kernel; above it, an int8 x int8 product (prefill).
INT8_DECODE_MAX_ROWS = 16

# Quantize the vision tower's linear layers too (bench/speed.py measures with and without).
# On every kind of CPU: with native bf16 they cost 7 of 64 greedy tokens of agreement
# for about 1 s of prefill, but without them int8 peaks at 3.54 GB there, over 3.5.
INT8_VISION = True
# ... but not those of its patch mergers, whose outputs go straight into the language model
# (the main merger and the deepstack ones): measured, they cost most of the agreement.
INT8_VISION_SKIP = ("merger",)

# fbgemm packs a large weight far slower per weight than a block of it that fits in
# the CPU's caches (the lm_head's 151936x2048: 4.4 s whole, 1.1 s in blocks of 4096
# rows; a 6144x2048 gate or up projection: 62 ms whole, 40 ms in two halves; a
# 2048x6144 down projection: 44 ms, 30 ms in two), so layers of more than this many
# int8 bytes are packed, and run, in equal blocks of rows of at most this many.
# Each block is one more call at run time (it quantizes the activations again):
# at 489 rows the two halves cost 36.2 ms against 35.4 (gate/up) and 45.6 against
# 43.4 (down), where 1024-row gate/up blocks would cost 43.6 ms (emulated AVX2,
# 2 threads, /tmp timing scripts).
FBGEMM_PACK_BYTES = 8 << 20

# Where fbgemm is the kernel (float32 activations, x86), the vision tower's layers run on
# onednn's int8 product instead (`layer_kernel`): they only multiply many rows, where it is
# as fast or faster, and it packs its weights 3-5x faster than fbgemm (the vision tower's:
# about 0.3 s of CPU time against 1.1 s at each load, emulated AVX2). Not the language
# model's: onednn's one-row product (decode) is 3x slower than fbgemm's.
INT8_VISION_ONEDNN = True

TORCHAO_PIN = "torchao==0.18.0"


def check_int8_possible(device: str) -> None:
    from .errors import ModelError

    if device != "cpu":
        raise ModelError(
            f"--quantize int8 runs on the CPU only (int8 CPU kernels); on --device {device} "
            "use --quantize none (bf16/fp16 on the GPU is faster and exact), or pass --device cpu"
        )
    if not _installed("torchao"):  # imported only where used (2 s): reading fbgemm's cache does not
        raise ModelError(
            f"--quantize int8 needs the torchao package: pip install {TORCHAO_PIN} "
            "(it is in requirements.txt)"
        ) from None


def _installed(name: str) -> bool:
    import sys
    from importlib.util import find_spec

    if name in sys.modules:
        return sys.modules[name] is not None
    return find_spec(name) is not None


def int8_linear_names(model, vision: bool | None = None) -> list[str]:
    """The linear layers int8 applies to: the language model's, the lm_head and (by default) the vision tower's."""
    import torch

    vision = INT8_VISION if vision is None else vision
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        dotted = f".{name}."
        if ".language_model." in dotted or name == "lm_head":
            names.append(name)
        elif vision and ".visual." in dotted and not any(skip in name for skip in INT8_VISION_SKIP):
            names.append(name)
    return names


# --- kernels -----------------------------------------------------------------------

_FBGEMM: list = []


def fbgemm_kernel() -> dict | None:
    """{"reduce_range": bool} when PyTorch's fbgemm int8 backend runs here, else None.

    Checked once by packing and running a small layer: PyTorch has deprecated
    its quantized tensors (to be removed in a later release), and a torch
    without them falls back to the torchao kernels.
    """
    if not _FBGEMM:
        import torch

        info = None
        if "fbgemm" in torch.backends.quantized.supported_engines:
            try:
                vnni = bool(torch.cpu.get_capabilities().get("avx512_vnni"))
            except (AttributeError, RuntimeError):
                vnni = False
            # fbgemm picks its instructions itself and follows FBGEMM_ENABLE_INSTRUCTIONS
            limited = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper() in ("AVX2", "AVX512", "AVX512_256")
            try:
                packed = _fbgemm_pack(torch.ones(8, 16, dtype=torch.int8))
                y = torch.ops.quantized.linear_dynamic(torch.ones(2, 16), packed, True)
                if torch.allclose(y, torch.full((2, 8), 16.0), rtol=0.05):
                    info = {"reduce_range": not vnni or limited}
            except (RuntimeError, AttributeError, NotImplementedError):
                info = None
        _FBGEMM.append(info)
    return _FBGEMM[0]


_ONEDNN: list = []


def onednn_kernel() -> dict | None:
    """{"zero_point": z, "levels": q} when PyTorch's onednn int8 linear runs here, else None.

    The operators of PyTorch's x86 int8 path (`torch.ops.onednn.qlinear_prepack`,
    `qlinear_pointwise`) on plain int8 tensors. Activations are quantized here
    to unsigned values z - q .. z + q: 7 bits (z = 64, q = 63) unless the CPU
    has AVX-512 VNNI (8 bits) and onednn is not limited below it, as fbgemm
    needs (16-bit sums saturate otherwise). Checked once on a small layer.
    """
    if not _ONEDNN:
        import torch

        try:
            vnni = bool(torch.cpu.get_capabilities().get("avx512_vnni"))
        except (AttributeError, RuntimeError):
            vnni = False
        limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
        if limit and "VNNI" not in limit and "AMX" not in limit and limit not in ("ALL", "DEFAULT"):
            vnni = False
        info = {"zero_point": 128, "levels": 127} if vnni else {"zero_point": 64, "levels": 63}
        try:
            packed = torch.ops.onednn.qlinear_prepack(torch.ones(8, 16, dtype=torch.int8), None)
            x = _onednn_quantize(torch.ones(2, 16), info)[0]
            y = _onednn_product(x, packed, torch.ones(8), info)
            if not torch.allclose(y, torch.full((2, 8), 16.0), rtol=0.05):
                info = None
        except (RuntimeError, AttributeError, NotImplementedError):
            info = None
        _ONEDNN.append(info)
    return _ONEDNN[0]


def _onednn_quantize(x, info):
    """(unsigned int8 rows of x scaled to max |x| = 1, each row's max |x|)."""
    import torch

    s = _row_max(x)
    # x / s in [-1, 1] -> [z - q + 0.5, z + q + 0.5], truncated to z - q .. z + q (round half up)
    half = torch.tensor(info["zero_point"] + 0.5)
    q = torch.addcmul(half, x, info["levels"] / s)
    if info["zero_point"] + info["levels"] <= 127:
        # 7 bits fit int8 too, with the same bits: float -> int8 is vectorized and 3-10x faster than
        # float -> uint8 (0.06-0.8 against 0.6-2.3 ms for the vision tower's 1900x1024 and x4096)
        return q.to(torch.int8).view(torch.uint8), s
    return q.to(torch.uint8), s


def _row_max(x):
    """Each row's max |x| (a column; at least 1e-6): the rows' activation scales of both int8 kernels."""
    return x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-6)


def _onednn_product(xq, packed, scale, info):
    """onednn's int8 product of quantized rows (`_onednn_quantize`) by packed int8 weights with per-row
    `scale`, in float32 (each row still to be multiplied by its max |x|)."""
    import torch

    zeros = _onednn_zero_points(scale.shape[0])
    return torch.ops.onednn.qlinear_pointwise(xq, 1.0 / info["levels"], info["zero_point"], packed, scale, zeros,
                                              None, 1.0, 0, torch.float32, "none", [], "")


_ZEROS: dict = {}


def _onednn_zero_points(rows: int):
    import torch

    if rows not in _ZEROS:
        _ZEROS[rows] = torch.zeros(rows, dtype=torch.long)
    return _ZEROS[rows]


def onednn_pack(qdata):
    """onednn's packed form of int8 rows (a copy: `qdata` can be reused)."""
    import torch

    return torch.ops.onednn.qlinear_prepack(qdata.contiguous(), None)


def layer_kernel(name: str, kernel: str) -> str:
    """The kernel of layer `name` when the model's is `kernel`: onednn instead of fbgemm for the vision
    tower's layers, which only ever multiply many rows (an image's patches, 1,900 for 800x600)."""
    if kernel == "fbgemm" and INT8_VISION_ONEDNN and ".visual." in f".{name}." and onednn_kernel() is not None:
        return "onednn"
    return kernel


def choose_kernel(dtype: str) -> str:
    """fbgemm for float32 activations (CPUs without native bf16) where it runs; torchao's kernels otherwise.

    With bfloat16 activations (CPUs with native bf16) `_weight_int8pack_mm` and
    `torch._int_mm` need no packing (their int8 rows are mapped from the cache),
    where fbgemm's packing costs more of a short request than its faster decode
    saves (16 new tokens: 19.5 s against 17 s; docs/performance.md).
    """
    return "fbgemm" if dtype == "float32" and fbgemm_kernel() is not None else "torchao"


def _fbgemm_pack(qdata):
    """fbgemm's packed form of int8 rows, at scale 1 (symmetric: zero point 0).

    `qdata`: plain int8 rows (copied into a quantized tensor first) or a
    quantized tensor at scale 1 (`fbgemm_buffer`'s, packed as it is). The
    packed form is a copy either way.

    The rows' own scales are applied to the product's columns afterwards
    (`Int8Linear._fbgemm`): packed per channel, PyTorch reads each row's scale
    and zero point back one at a time (`.item()`, about 2 us a row: 0.9-1.8 s of
    CPU time at each load of the 2B model's 946,560 rows, emulated AVX2), which
    costs more than the extra pass over the product (about 0.1 s of a prefill).

    Thread-safe (the int8 cache's loader packs in several threads): the
    quantized engine is process-wide state, so it is set to fbgemm, never
    toggled back and forth.
    """
    import warnings

    import torch

    if torch.backends.quantized.engine != "fbgemm":
        torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "quantized tensors are deprecated"
        q = qdata if qdata.is_quantized else torch._make_per_tensor_quantized_tensor(qdata, 1.0, 0)
        return torch.ops.quantized.linear_prepack(q, None)


def fbgemm_buffer(nbytes: int):
    """(a flat quantized int8 tensor at scale 1, a plain int8 tensor over the same bytes).

    Rows read into the plain one are packed from the quantized one
    (`_fbgemm_pack(quantized[:n].view(rows, columns))`) with no copy between:
    the copy into a new quantized tensor cost 0.75 s of CPU time per load of
    the 2B model (emulated AVX2), and each copy freed left a hole in the heap.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch._empty_affine_quantized((nbytes,), scale=1.0, zero_point=0, dtype=torch.qint8)
    return quantized, torch.empty(0, dtype=torch.int8).set_(quantized.untyped_storage(), 0, (nbytes,))


def fbgemm_block_rows(rows: int, columns: int) -> int:
    """Rows per packed block of a rows x columns int8 layer: all of them, or equal blocks of at most
    FBGEMM_PACK_BYTES."""
    rows, most = max(rows, 1), max(FBGEMM_PACK_BYTES // max(columns, 1), 1)
    blocks = -(-rows // most)
    return -(-rows // blocks)


def fbgemm_pack_rows(qdata) -> list:
    """fbgemm's packed form of a layer: one block, or equal blocks (`fbgemm_block_rows`) for many rows."""
    rows = fbgemm_block_rows(*qdata.shape)
    return [_fbgemm_pack(qdata[i:i + rows]) for i in range(0, qdata.shape[0], rows)]


_TEMPLATE: list = []


def _template():
    """A tiny torchao Int8Tensor whose activation settings new Int8Tensors copy."""
    if not _TEMPLATE:
        import torch
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        _TEMPLATE.append(_quantize_rows(torch.zeros(1, 8, dtype=torch.bfloat16),
                                        Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)))
    return _TEMPLATE[0]


try:
    import torch as _torch

    _Module = _torch.nn.Module
except ImportError:  # torch is imported lazily elsewhere; int8 is only used with it
    _Module = object


class Int8Linear(_Module):
    """A linear layer with per-row int8 weights; the kernel is chosen by CPU and row count (module doc).

    `quantized` is a Linear whose weight is a torchao Int8Tensor. With fbgemm,
    the weight lives only in fbgemm's packed form (`weight` unpacks a copy).
    """

    def __init__(self, quantized, kernel: str | None = None):
        q = quantized.weight
        super().__init__()
        self._setup(quantized.in_features, quantized.out_features, quantized.bias, q.qdata, q.scale.reshape(-1),
                    q.dtype, kernel or choose_kernel(str(q.dtype).removeprefix("torch.")), q)

    @classmethod
    def from_packed(cls, linear, packed: list, scale, kernel: str = "fbgemm") -> "Int8Linear":
        """An fbgemm (or onednn) Int8Linear with `linear`'s shape and bias over `fbgemm_pack_rows`' result
        (or `[onednn_pack(rows)]`).

        Needs neither torchao nor the float weight: what the int8 cache's
        loader builds from weights packed in background threads.
        """
        import torch

        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        layer._setup(linear.in_features, linear.out_features, bias, None, scale.reshape(-1),
                     linear.weight.dtype, kernel, None, packed)
        return layer

    def _setup(self, in_features, out_features, bias, qdata, scale, weight_dtype, kernel, qweight, packed=None):
        import torch

        self.in_features = in_features
        self.out_features = out_features
        self.bias = bias
        self.weight_dtype = weight_dtype
        self.kernel = kernel
        self.register_buffer("row_scale_f32", scale.float(), persistent=False)
        self._onednn = None
        if self.kernel == "fbgemm":  # the int8 rows live only in fbgemm's packed form
            self.reduce_range = (fbgemm_kernel() or {"reduce_range": True})["reduce_range"]
            self._packed = packed if packed is not None else fbgemm_pack_rows(qdata)
            self._qweight = self._qdata = None
        elif self.kernel == "onednn":  # ... or in onednn's
            self._onednn = packed[0] if packed is not None else onednn_pack(qdata)
            self._packed = self._qweight = self._qdata = None
        else:
            self._packed = None
            self._qweight = torch.nn.Parameter(qweight, requires_grad=False)
            self._qdata = qdata
            # the weight-only kernel takes the scales in the activation dtype
            self.register_buffer("row_scale", scale.to(torch.bfloat16), persistent=False)
        self._int_mm_ok = self.in_features % 8 == 0 and self.out_features % 8 == 0

    @property
    def weight(self):
        """The torchao Int8Tensor of this layer (with fbgemm: unpacked, a copy)."""
        if self._qweight is not None:
            return self._qweight
        qdata, scale = self.int8_data()
        return _int8_tensor(qdata, scale.to(_template().scale.dtype), self.weight_dtype, _template())

    def int8_data(self):
        """(int8 rows, float32 scale per row): a copy with fbgemm."""
        import torch

        parts = list(self.int8_row_blocks())
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), self.row_scale_f32

    def int8_row_blocks(self):
        """The int8 rows, one block at a time (with fbgemm, each block unpacked when asked for)."""
        import torch

        if self._onednn is not None:
            yield self._onednn.to_dense().t().contiguous()  # packed as columns
            return
        if self._packed is None:
            yield self._qdata
            return
        for p in self._packed:
            yield torch.ops.quantized.linear_unpack(p)[0].int_repr()

    def forward(self, x):
        import torch

        if x.device.type != "cpu":
            return torch.nn.functional.linear(x, self.weight, self.bias)
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)
        if self._packed is not None or self._onednn is not None:  # bias added inside
            y = self._fbgemm(flat) if self._packed is not None else self._onednn_linear(flat)
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        elif rows <= INT8_DECODE_MAX_ROWS and x.dtype == torch.bfloat16:
            y = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self._qdata, self.row_scale)
        elif x.dtype == torch.bfloat16 and self._int_mm_ok:
            y = self._int8_matmul(flat)
        else:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _fbgemm(self, x):
        """fbgemm's dynamic int8 linear, with one activation scale per row (see the module doc), and the bias.

        On every thread at decode too. An earlier build switched one-row products
        to one thread (it measured 8 ms to wake the second thread per product);
        re-measured in the model on the emulated AVX2 CPU, 2 threads decode at
        82-84 ms per token against 100-104 ms on one (docs/performance.md).
        """
        import torch

        xf = x.float()
        s = None
        if xf.shape[0] == 1:  # one row: fbgemm's per-tensor scale is already per token
            xf = xf.contiguous()
        else:
            s = _row_max(xf)
            xf = xf * s.reciprocal()  # a product is faster than a quotient (2 ms of 1900x4096)
        w = self.row_scale_f32  # the weight rows' scales, the product's columns' (packed at scale 1)
        parts = [torch.ops.quantized.linear_dynamic(xf, p, self.reduce_range) for p in self._packed]
        if len(parts) == 1:
            y = parts[0].mul_(w)
        else:  # the columns' scales applied as the blocks are put together (no pass of their own)
            y = torch.empty(xf.shape[0], self.out_features)
            start = 0
            for part in parts:
                stop = start + part.shape[-1]
                torch.mul(part, w[start:stop], out=y[:, start:stop])
                start = stop
        return self._rows_back(y, s)

    def _onednn_linear(self, x):
        """onednn's int8 linear, one activation scale per row, and the bias."""
        info = onednn_kernel()
        xq, s = _onednn_quantize(x.float(), info)
        return self._rows_back(_onednn_product(xq, self._onednn, self.row_scale_f32, info), s)

    def _rows_back(self, y, s):
        """y's rows times their activation scales `s` (None: as they are), and the bias: one pass, in place."""
        import torch

        if s is not None:
            return torch.addcmul(self.bias, y, s, out=y) if self.bias is not None else y.mul_(s)
        return y if self.bias is None else y.add_(self.bias)

    def _int8_matmul(self, x):
        """Dynamic per-token int8 activations x int8 weights (`torch._int_mm`), rescaled to bfloat16.

        The scheme of torchao's Int8DynamicActivationInt8WeightConfig (symmetric,
        one scale per token and per output row), written out so that the int8
        product runs on PyTorch's kernel directly.
        """
        import torch

        x_scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min_(1e-5).div_(127.0)
        xq = (x.float() / x_scale).round_().clamp_(-128, 127).to(torch.int8)
        y = torch._int_mm(xq, self._qdata.t())
        return y.float().mul_(x_scale).mul_(self.row_scale_f32).to(torch.bfloat16)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row ({self.kernel})"


# --- quantizing ----------------------------------------------------------------------


def quantize_int8(model, path: str | None = None, kernel: str | None = None) -> int:
    """Replace the linear layers of `int8_linear_names` by Int8Linear; returns how many."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    from .weights import WeightReader

    reader = WeightReader(path) if path else None
    tied = _tied_source(model)
    count = 0
    names = int8_linear_names(model)
    names.sort(key=lambda n: n != "lm_head")  # the largest first, while little else is allocated
    # with the collector on, even inside the CLI's load (which pauses it: session.loaded_for_life):
    # torchao's quantize_ leaves reference cycles that hold each layer's temporaries, and with
    # the collector paused they piled up to a 5.0 GB first-run peak (3.34-3.37 GB with it on)
    collecting = gc.isenabled()
    gc.enable()
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
            chosen = layer_kernel(name, kernel or choose_kernel(str(dtype).removeprefix("torch.")))
            model.set_submodule(name, _int8_linear(linear, _quantize_rows(weight.to(dtype), config), chosen))
            del linear, weight
            _trim_heap()  # the bf16 read and torchao's float32 temporaries: back to the OS now
            count += 1
    finally:
        if reader is not None:
            reader.close()
        if not collecting:
            gc.disable()
    _mark_int8(model)
    release_freed_memory()
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

    if scale.dim() == 1:
        scale = scale.reshape(-1, *like.scale.shape[1:])
    return Int8Tensor(qdata, scale, [1, qdata.shape[1]], dtype, act_quant_kwargs=like.act_quant_kwargs,
                      reduce_range=getattr(like, "reduce_range", False))


def _int8_linear(linear, weight, kernel: str | None = None) -> Int8Linear:
    """An Int8Linear with `linear`'s shape and bias and the int8 `weight` (a torchao Int8Tensor)."""
    import torch

    fresh = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    fresh.weight = torch.nn.Parameter(weight, requires_grad=False)
    if linear.bias is not None:
        fresh.bias = torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
    return Int8Linear(fresh, kernel)


def release_freed_memory() -> None:
    """Give the quantization temporaries back to the OS (glibc keeps freed heap otherwise)."""
    gc.collect()
    _trim_heap()


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
