"""Model loading and acceleration (qwenvl/accel.py) on the tiny checkpoint: --quantize int8, the bf16 path."""
from __future__ import annotations

import sys
import threading

import pytest

torch = pytest.importorskip("torch")


def _inputs(tiny_model):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model)
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    text = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits.float()


def test_int8_runs_end_to_end_through_the_cli(run_tiny, media):
    r = run_tiny("--image", media["jpeg"], "--format", "json", "--quantize", "int8")
    assert r.code == 0, r
    rec = r.json
    for key in ("text", "model", "device", "dtype", "generation", "usage", "finish_reason", "timings"):
        assert key in rec, key
    assert rec["text"] and rec["device"] == "cpu"
    assert rec["usage"]["completion_tokens"] == 8 and rec["finish_reason"] == "length"


def test_int8_text_output_and_determinism(run_tiny, media):
    a = run_tiny("--image", media["jpeg"], "--quantize", "int8")
    b = run_tiny("--image", media["jpeg"], "--quantize", "int8")
    assert a.code == b.code == 0, a
    assert a.out.strip() and a.out == b.out


def test_int8_replaces_the_language_model_and_vision_linears(tiny_model):
    from torchao.quantization import Int8Tensor

    from qwenvl.accel import Int8Linear, load_model

    model = load_model(tiny_model, "bfloat16", "cpu", "int8")
    quantized = {name for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    lm = model.model.language_model
    n_layers = len(lm.layers)
    lm_quantized = {n for n in quantized if ".language_model." in f".{n}."}
    assert len(lm_quantized) == 7 * n_layers  # q k v o gate up down per layer
    assert "lm_head" in quantized
    for name in quantized:
        module = model.get_submodule(name)
        assert isinstance(module.weight, Int8Tensor)
        assert module.weight.qdata.dtype == torch.int8
    # the linear layers of the vision tower's blocks (attention, MLP) are int8 too; its patch mergers not
    visual = {f"model.visual.{n}" for n, m in model.model.visual.named_modules()
              if isinstance(m, (torch.nn.Linear, Int8Linear)) and "merger" not in n}
    assert visual and visual <= quantized
    assert not any("merger" in n for n in quantized)
    assert quantized == lm_quantized | visual | {"lm_head"}
    # the embeddings, norms and the patch convolution keep the load dtype
    assert lm.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.visual.patch_embed.proj.weight.dtype == torch.bfloat16
    assert getattr(model, "qwenvl_quantize", None) == "int8"


def test_int8_with_float32_activations_keeps_a_bf16_embedding_table(tiny_model):
    """--dtype float32 --quantize int8 (CPUs without native bf16): float32 around int8 layers, logits close."""
    from qwenvl.accel import Int8Linear, load_model
    from qwenvl.int8 import fbgemm_kernel, onednn_kernel
    from qwenvl.int8_float32 import Bf16StoredLinear

    inputs = _inputs(tiny_model)
    model = load_model(tiny_model, "float32", "cpu", "int8")
    emb = model.get_input_embeddings()
    assert emb.weight.dtype == torch.bfloat16
    # the patch mergers' weights stay bf16 in memory (multiplied in float32); all else is float32
    stored = {id(m.weight) for m in model.modules() if isinstance(m, Bf16StoredLinear)}
    assert stored and all("merger" in n for n, m in model.named_modules() if isinstance(m, Bf16StoredLinear))
    floats = {p.dtype for n, p in model.named_parameters()
              if p is not emb.weight and id(p) not in stored and p.is_floating_point()}
    assert floats == {torch.float32}
    kernels = {n: m.kernel for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    language = {k for n, k in kernels.items() if ".visual." not in f".{n}."}
    vision = {k for n, k in kernels.items() if ".visual." in f".{n}."}
    assert language == {"fbgemm" if fbgemm_kernel() else "torchao"}
    # the vision tower's layers, which only multiply many rows: onednn's product where fbgemm runs
    assert vision == ({"onednn" if onednn_kernel() else "fbgemm"} if fbgemm_kernel() else {"torchao"})
    ref = _logits(load_model(tiny_model, "float32", "cpu", "none"), inputs)
    got = _logits(model, inputs)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05, rel


def test_int8_logits_stay_close_to_bf16(tiny_model):
    from qwenvl.accel import load_model

    inputs = _inputs(tiny_model)
    ref = _logits(load_model(tiny_model, "bfloat16", "cpu", "none"), inputs)
    got = _logits(load_model(tiny_model, "bfloat16", "cpu", "int8"), inputs)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05, rel


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 40])
def test_int8_linear_kernels_match_the_dequantized_weights(rows):
    """Both torchao-path kernels (weight-only for few rows, int8 x int8 for many) compute x @ dequant(W).T + b."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from qwenvl.accel import INT8_DECODE_MAX_ROWS, Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 384, bias=True).to(torch.bfloat16)
    quantize_(linear, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    layer = Int8Linear(linear, kernel="torchao")  # the kernels used where fbgemm is missing (ARM64)
    x = torch.randn(1, rows, 256, dtype=torch.bfloat16)
    w = layer.weight.qdata.float() * layer.weight.scale.float().reshape(-1, 1)
    ref = x.float() @ w.T + layer.bias.float()
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (1, rows, 384) and y.dtype == torch.bfloat16
    rel = ((y.float() - ref).norm() / ref.norm()).item()
    assert rel < (0.01 if rows <= INT8_DECODE_MAX_ROWS else 0.03), rel


@pytest.mark.parametrize("rows", [1, 3, 17, 500])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fbgemm_int8_linear_matches_the_dequantized_weights(rows, dtype):
    """x86: fbgemm's dynamic int8 linear with per-token activation scales, any row count, both dtypes."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from qwenvl.int8 import Int8Linear, fbgemm_kernel

    if fbgemm_kernel() is None:
        pytest.skip("no fbgemm backend in this torch (not x86)")
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 384, bias=True).to(torch.bfloat16)
    quantize_(linear, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    w = linear.weight.qdata.float() * linear.weight.scale.float().reshape(-1, 1)
    layer = Int8Linear(linear, kernel="fbgemm")
    assert layer.kernel == "fbgemm" and torch.equal(layer.weight.qdata, linear.weight.qdata)
    x = torch.randn(1, rows, 256, dtype=dtype)
    x[0, 0] *= 50  # one token with huge activations must not spoil the others' precision
    ref = x.float() @ w.T + layer.bias.float()
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (1, rows, 384) and y.dtype == dtype
    for row in range(rows):
        rel = ((y[0, row].float() - ref[0, row]).norm() / ref[0, row].norm()).item()
        assert rel < 0.03, (row, rel)


@pytest.mark.parametrize("bits", ["this CPU's", "7"])  # 7: as without AVX-512 VNNI (safe on any CPU)
@pytest.mark.parametrize("rows", [1, 3, 500])
def test_onednn_int8_linear_matches_the_dequantized_weights(rows, bits, monkeypatch):
    """x86: onednn's int8 linear (the vision tower's where fbgemm runs), per-token activation scales, any row count."""
    from qwenvl import int8
    from qwenvl.int8 import Int8Linear, onednn_kernel

    if onednn_kernel() is None:
        pytest.skip("no onednn int8 linear in this torch")
    if bits == "7":
        monkeypatch.setattr(int8, "_ONEDNN", [{"zero_point": 64, "levels": 63}])
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 384, bias=True)
    qdata = torch.randint(-127, 128, (384, 256), dtype=torch.int8)
    scale = torch.rand(384) / 100 + 1e-3
    buffer = qdata.clone()
    layer = Int8Linear.from_packed(linear, [int8.onednn_pack(buffer)], scale, kernel="onednn")
    buffer.zero_()  # packing copied the rows: the loader reuses its read buffer
    assert layer.kernel == "onednn" and torch.equal(layer.int8_data()[0], qdata)
    x = torch.randn(1, rows, 256)
    x[0, 0] *= 50  # one token with huge activations must not spoil the others' precision
    ref = x @ (qdata.float() * scale.reshape(-1, 1)).T + linear.bias.detach()
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (1, rows, 384) and y.dtype == torch.float32
    for row in range(rows):
        rel = ((y[0, row] - ref[0, row]).norm() / ref[0, row].norm()).item()
        assert rel < 0.03, (row, rel)


def test_without_onednn_the_vision_tower_stays_on_fbgemm(tiny_model, monkeypatch):
    from qwenvl import int8
    from qwenvl.accel import Int8Linear, load_model

    _fbgemm_or_skip()
    monkeypatch.setattr(int8, "_ONEDNN", [None])  # as where its check failed
    model = load_model(tiny_model, "float32", "cpu", "int8")
    assert {m.kernel for m in model.modules() if isinstance(m, Int8Linear)} == {"fbgemm"}
    assert torch.isfinite(_logits(model, _inputs(tiny_model))).all()


def test_bf16_path_is_bit_identical_to_from_pretrained(tiny_model):
    from transformers import AutoModelForImageTextToText

    from qwenvl.accel import load_model

    inputs = _inputs(tiny_model)
    stock = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.bfloat16).eval()
    ours = load_model(tiny_model, "bfloat16", "cpu", "none")
    assert torch.equal(_logits(stock, inputs), _logits(ours, inputs))


def test_weight_reader_reads_what_safetensors_reads(tiny_model):
    from pathlib import Path

    from safetensors.torch import load_file

    from qwenvl.accel import _WeightReader

    (file,) = Path(tiny_model).glob("*.safetensors")
    expected = load_file(file)
    reader = _WeightReader(tiny_model)
    try:
        assert set(reader.entries) == set(expected)
        for key, tensor in expected.items():
            assert torch.equal(reader.read(key), tensor), key
            if tensor.dim() == 2 and tensor.shape[0] > 3:  # a block of rows (the int8 cache's lm_head)
                assert torch.equal(reader.read(key, (1, 3)), tensor[1:3]), key
                assert torch.equal(reader.read(key, (2, 10**9)), tensor[2:]), key
        assert reader.read("no.such.weight") is None
        # into= (the int8 cache's packing): one buffer per thread, its first bytes overwritten by each read
        big, small = sorted((k for k, t in expected.items() if t.dim() == 2), key=lambda k: -expected[k].numel())[:2]
        size = lambda key: expected[key].numel() * expected[key].element_size()  # noqa: E731
        into = torch.full((size(big) + 5,), 7, dtype=torch.int8)
        first = reader.read(big, into=into)
        assert torch.equal(first, expected[big]) and first.data_ptr() == into.data_ptr()
        assert into[size(big):].eq(7).all()
        second = reader.read(small, into=into)
        assert torch.equal(second, expected[small]) and second.data_ptr() == first.data_ptr()
        assert reader.read(small, into=into[:size(small) - 1]) is None  # too small: nothing read
    finally:
        reader.close()


def test_int8_on_a_gpu_is_refused_clearly(cli, tiny_model, media, monkeypatch):
    import qwenvl.device as devices

    monkeypatch.setattr(devices, "resolve_device", lambda name, log=None: "cuda")
    monkeypatch.setattr(devices, "choose_dtype", lambda name, device, *a, **k: ("bfloat16", "test"))
    r = cli("--image", media["jpeg"], "--model", tiny_model, "--quantize", "int8", "--max-new-tokens", "2")
    assert r.code == 1, r
    assert "error: --quantize int8 runs on the CPU only" in r.err
    assert "--quantize none" in r.err and "Traceback" not in r.err


def test_int8_without_torchao_says_how_to_install(tiny_model, monkeypatch):
    from qwenvl.accel import load_model
    from qwenvl.errors import ModelError

    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    with pytest.raises(ModelError, match="pip install torchao=="):
        load_model(tiny_model, "bfloat16", "cpu", "int8")


def test_unknown_quantize_value_is_refused(tiny_model):
    from qwenvl.accel import load_model
    from qwenvl.errors import ModelError

    with pytest.raises(ModelError, match="--quantize int4"):
        load_model(tiny_model, "bfloat16", "cpu", "int4")


def test_chunked_quantization_equals_whole_matrix_quantization():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    from qwenvl.accel import _quantize_rows

    torch.manual_seed(0)
    weight = torch.randn(50, 64, dtype=torch.bfloat16)
    config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    whole = _quantize_rows(weight, config, chunk_rows=1000)
    chunked = _quantize_rows(weight, config, chunk_rows=7)
    assert torch.equal(whole.qdata, chunked.qdata) and torch.equal(whole.scale, chunked.scale)
    assert list(chunked.block_size) == list(whole.block_size) and chunked.dtype == whole.dtype
    x = torch.randn(2, 20, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(torch.nn.functional.linear(x, whole), torch.nn.functional.linear(x, chunked))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "per-head", "broadcast", "additive"])
def test_cpu_decode_attention_computes_what_sdpa_computes(mask_kind):
    """One query row per sequence (decode): grouped-query heads, left padding masks, batch of 2."""
    import types

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from qwenvl.accel import cpu_decode_attention

    torch.manual_seed(0)
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    q, k, v = torch.randn(2, 8, 1, 32), torch.randn(2, 4, 23, 32), torch.randn(2, 4, 23, 32)
    keep = torch.ones(2, 1, 1, 23, dtype=torch.bool)
    keep[1, ..., :9] = False  # the second sequence is left-padded
    per_head = keep.expand(2, 8, 1, 23).clone()
    per_head[0, 3, ..., 5] = False  # a mask that differs between heads
    mask = {"none": None, "bool": keep, "per-head": per_head, "broadcast": keep[1:],
            "additive": torch.zeros(2, 1, 1, 23).masked_fill(~keep, float("-inf"))}[mask_kind]
    got, _ = cpu_decode_attention(module, q, k, v, mask, scaling=0.2)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.2)
    assert got.shape == ref.shape == (2, 1, 8, 32)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


def test_cpu_decode_attention_leaves_prefill_to_sdpa():
    import types

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from qwenvl.accel import cpu_decode_attention

    module = types.SimpleNamespace(num_key_value_groups=1, is_causal=True, training=False)
    q = k = v = torch.randn(1, 2, 5, 16)
    got, _ = cpu_decode_attention(module, q, k, v, None)
    ref, _ = sdpa_attention_forward(module, q, k, v, None)
    assert torch.equal(got, ref)


def test_cpu_load_routes_the_language_model_to_decode_attention(tiny_model):
    """Batched greedy generation (left padding): the same tokens and scores as stock sdpa (float32)."""
    from transformers import AutoProcessor

    from qwenvl.accel import CPU_ATTENTION, load_model

    model = load_model(tiny_model, "float32", "cpu", "none")
    assert model.config.text_config._attn_implementation == CPU_ATTENTION
    assert model.config.vision_config._attn_implementation == "sdpa"
    processor = AutoProcessor.from_pretrained(tiny_model)
    processor.tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": t}]}],
                                           tokenize=False, add_generation_prompt=True)
             for t in ("hi", "a much longer question about the weather today")]
    inputs = processor(text=texts, return_tensors="pt", padding=True)
    outputs = {}
    for impl in (CPU_ATTENTION, "sdpa"):
        model.config.text_config._attn_implementation = impl
        with torch.inference_mode():
            outputs[impl] = model.generate(**inputs, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                                           output_logits=True, return_dict_in_generate=True)
    ours, stock = outputs[CPU_ATTENTION], outputs["sdpa"]
    assert torch.equal(ours.sequences, stock.sequences)
    for a, b in zip(ours.logits, stock.logits):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_int8_prefill_kernel_follows_torchaos_scheme():
    """Many rows: our per-token int8 x int8 product agrees with torchao's own path for the same weights."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from qwenvl.accel import Int8Linear

    torch.manual_seed(1)
    linear = torch.nn.Linear(512, 256, bias=False).to(torch.bfloat16)
    quantize_(linear, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    layer = Int8Linear(linear)
    x = torch.randn(64, 512, dtype=torch.bfloat16)
    with torch.inference_mode():
        ours, theirs = layer(x).float(), torch.nn.functional.linear(x, layer.weight).float()
    assert ((ours - theirs).norm() / theirs.norm()).item() < 0.02


def _last_logits(model, tiny_model):
    return _logits(model, _inputs(tiny_model))[0, -1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])  # float32: fbgemm, packed in threads (x86)
def test_int8_weights_are_cached_and_the_cache_gives_the_same_model(tiny_model, tmp_path, monkeypatch, dtype):
    from qwenvl.accel import Int8Linear, int8_cache_file, load_model

    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path / "cache"))
    logs = []
    fresh = load_model(tiny_model, dtype, "cpu", "int8", log=logs.append)
    cache = int8_cache_file(tiny_model)
    assert cache.parent == tmp_path / "cache" and cache.is_file()
    assert any("quantized" in m for m in logs) and any(f"cached in {cache}" in m for m in logs)
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temporary left

    logs.clear()
    cached = load_model(tiny_model, dtype, "cpu", "int8", log=logs.append)
    assert logs == [f"int8: weights from {cache}"]
    assert sum(isinstance(m, Int8Linear) for m in cached.modules()) == \
        sum(isinstance(m, Int8Linear) for m in fresh.modules())
    assert torch.equal(_last_logits(cached, tiny_model), _last_logits(fresh, tiny_model))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_torn_int8_cache_is_replaced_not_trusted(tiny_model, tmp_path, monkeypatch, dtype):
    from qwenvl.accel import int8_cache_file, load_model

    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path))
    reference = _last_logits(load_model(tiny_model, dtype, "cpu", "int8"), tiny_model)
    cache = int8_cache_file(tiny_model)
    size = cache.stat().st_size
    with open(cache, "r+b") as f:  # as if the writer had been killed half-way (no atomic rename)
        f.truncate(size // 2)
    logs = []
    model = load_model(tiny_model, dtype, "cpu", "int8", log=logs.append)
    assert any(m.startswith(f"warning: ignoring int8 cache {cache}") for m in logs), logs
    assert not _packing_threads()
    assert cache.stat().st_size == size
    assert torch.equal(_last_logits(model, tiny_model), reference)


def test_int8_cache_can_be_turned_off_and_an_unwritable_one_only_warns(tiny_model, tmp_path, monkeypatch):
    from qwenvl.accel import int8_cache_file, load_model

    monkeypatch.setenv("QWENVL_INT8_CACHE", "0")
    assert int8_cache_file(tiny_model) is None
    logs = []
    load_model(tiny_model, "bfloat16", "cpu", "int8", log=logs.append)
    assert not any("cache" in m for m in logs), logs

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(blocker / "cache"))
    logs.clear()
    model = load_model(tiny_model, "bfloat16", "cpu", "int8", log=logs.append)
    assert any(m.startswith("warning: cannot cache int8 weights") for m in logs), logs
    assert getattr(model, "qwenvl_quantize", None) == "int8"


def test_int8_cache_key_follows_the_checkpoint_files(tiny_model, tmp_path, monkeypatch):
    import os
    import shutil

    from qwenvl.accel import int8_cache_file

    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    first = int8_cache_file(str(copy))
    weights = next(copy.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the checkpoint changed
    assert int8_cache_file(str(copy)) != first
    assert int8_cache_file(str(copy)) != int8_cache_file(tiny_model)


def _packing_threads():
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("qwenvl-int8")]


def _fbgemm_or_skip():
    from qwenvl.int8 import fbgemm_kernel

    if fbgemm_kernel() is None:
        pytest.skip("no fbgemm backend in this torch (not x86)")


def test_packing_started_before_the_load_gives_the_cached_model_and_ends(tiny_model, tmp_path, monkeypatch):
    """The session starts packing the cache before transformers loads; load_model takes it and closes it."""
    from qwenvl.accel import load_model, start_packing

    _fbgemm_or_skip()
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path))
    assert start_packing(tiny_model, "float32", "cpu", "int8") is None  # no cache yet: nothing to pack
    reference = _last_logits(load_model(tiny_model, "float32", "cpu", "int8"), tiny_model)
    assert start_packing(tiny_model, "bfloat16", "cpu", "int8") is None  # torchao's kernels map the cache
    assert start_packing(tiny_model, "float32", "cpu", "none") is None
    packing = start_packing(tiny_model, "float32", "cpu", "int8")
    assert packing is not None
    logs = []
    model = load_model(tiny_model, "float32", "cpu", "int8", log=logs.append, packing=packing)
    assert logs and logs[0].startswith("int8: weights from ")
    assert torch.equal(_last_logits(model, tiny_model), reference)
    assert not _packing_threads()


@pytest.mark.parametrize("every, per_layer", [(1, True), (10**12, False)])
def test_packing_gives_freed_memory_back_every_so_many_bytes(tiny_model, tmp_path, monkeypatch, every, per_layer):
    """Packing leaves freed holes in the heap: the packing trims it once per
    PACKING_TRIM_BYTES packed (never more than once per layer), and the model is the same."""
    from qwenvl import int8_cache
    from qwenvl.accel import load_model

    _fbgemm_or_skip()
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path))
    reference = _last_logits(load_model(tiny_model, "float32", "cpu", "int8"), tiny_model)  # writes the cache
    trims = []
    monkeypatch.setattr(int8_cache, "PACKING_TRIM_BYTES", every)
    monkeypatch.setattr(int8_cache, "_trim_heap", lambda: trims.append(threading.current_thread().name))
    model = load_model(tiny_model, "float32", "cpu", "int8")
    layers = sum(isinstance(m, int8_cache.Int8Linear) for m in model.modules())
    in_packing = [name for name in trims if name.startswith("qwenvl-int8")]
    assert len(in_packing) == (layers if per_layer else 0)
    assert len(trims) - len(in_packing) == 1  # and once when the cache load ends
    assert torch.equal(_last_logits(model, tiny_model), reference)


def test_a_failed_load_stops_the_packing_threads(tiny_model, tmp_path, monkeypatch):
    import transformers

    from qwenvl.accel import load_model, start_packing

    _fbgemm_or_skip()
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path))
    load_model(tiny_model, "float32", "cpu", "int8")  # writes the cache
    packing = start_packing(tiny_model, "float32", "cpu", "int8")
    assert packing is not None

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", broken)
    with pytest.raises(OSError, match="disk gone"):
        load_model(tiny_model, "float32", "cpu", "int8", packing=packing)
    assert not _packing_threads()


@pytest.mark.parametrize("rows", [1, 5])
def test_fbgemm_layers_of_many_rows_are_packed_in_blocks_with_the_same_result(monkeypatch, rows):
    """The lm_head (151936 rows) packs 4x faster in blocks of rows; outputs and unpacked rows are unchanged."""
    from qwenvl import int8
    from qwenvl.int8 import Int8Linear

    _fbgemm_or_skip()
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 200, bias=False)
    qdata = torch.randint(-127, 128, (200, 64), dtype=torch.int8)
    scale = torch.rand(200) / 100 + 1e-3
    whole = Int8Linear.from_packed(linear, int8.fbgemm_pack_rows(qdata), scale)
    monkeypatch.setattr(int8, "FBGEMM_PACK_BYTES", 64 * 64)  # 64 rows of 64 columns
    blocks = int8.fbgemm_pack_rows(qdata)
    assert [len(whole._packed), len(blocks)] == [1, 4]  # 4 equal blocks of 50 rows, at most 64
    split = Int8Linear.from_packed(linear, blocks, scale)
    x = torch.randn(1, rows, 64)
    with torch.inference_mode():
        y = split(x)
        assert torch.equal(y, whole(x))
    ref = x @ (qdata.float() * scale.reshape(-1, 1)).T  # each block's rows get their own scales
    assert ((y - ref).norm() / ref.norm()).item() < 0.03
    assert torch.equal(split.int8_data()[0], qdata) and torch.equal(whole.int8_data()[0], qdata)


def test_fbgemm_packs_from_its_quantized_buffer_without_a_copy_and_keeps_its_own():
    """The cache's packing reads rows into a quantized buffer (`fbgemm_buffer`) and packs from it: the
    plain and quantized tensors share their bytes, and the packed weights survive the buffer's reuse."""
    from qwenvl import int8

    _fbgemm_or_skip()
    torch.manual_seed(0)
    quantized, raw = int8.fbgemm_buffer(300 * 64)
    assert quantized.is_quantized and quantized.q_scale() == 1.0 and quantized.q_zero_point() == 0
    assert raw.dtype == torch.int8 and raw.data_ptr() == quantized.data_ptr()
    qdata = torch.randint(-127, 128, (200, 64), dtype=torch.int8)
    raw[:qdata.numel()].copy_(qdata.reshape(-1))
    packed = int8._fbgemm_pack(quantized[:qdata.numel()].view(200, 64))
    raw.fill_(3)  # the next layer's rows
    unpacked = torch.ops.quantized.linear_unpack(packed)[0]
    assert torch.equal(unpacked.int_repr(), qdata)
    assert torch.equal(torch.ops.quantized.linear_unpack(int8._fbgemm_pack(qdata))[0].int_repr(), qdata)


def test_fbgemm_blocks_are_equal_and_at_most_the_block_size():
    """Blocks of at most 8 MiB of int8: the gate/up and down projections in halves, the lm_head in 38 blocks."""
    from qwenvl.int8 import FBGEMM_PACK_BYTES, fbgemm_block_rows

    assert FBGEMM_PACK_BYTES == 8 << 20
    shapes = [(1, 2048), (2048, 2048), (4096, 2048), (4097, 2048), (6144, 2048), (2048, 6144), (4096, 1024)]
    assert [fbgemm_block_rows(*shape) for shape in shapes] == [1, 2048, 4096, 2049, 3072, 1024, 4096]
    block = fbgemm_block_rows(151936, 2048)
    assert block <= 4096 and -(-151936 // block) == 38


def test_the_cache_loader_packs_a_large_lm_head_in_blocks_with_the_same_logits(tiny_model, tmp_path, monkeypatch):
    """The lm_head is read and packed a block of rows at a time; the model computes the same logits."""
    from qwenvl import int8
    from qwenvl.accel import load_model

    _fbgemm_or_skip()
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path))
    fresh = load_model(tiny_model, "float32", "cpu", "int8")  # quantizes, writes the cache
    rows = fresh.lm_head.out_features
    assert len(fresh.lm_head._packed) == 1 and rows > 3 * 16
    monkeypatch.setattr(int8, "FBGEMM_PACK_BYTES", 16 * fresh.lm_head.in_features)  # 16 rows
    cached = load_model(tiny_model, "float32", "cpu", "int8")
    assert len(cached.lm_head._packed) == -(-rows // 16)
    kernels = [{n: m.kernel for n, m in model.named_modules() if isinstance(m, int8.Int8Linear)}
               for model in (fresh, cached)]
    assert kernels[0] == kernels[1]  # the vision tower's on onednn (where it runs) both ways
    assert torch.equal(_last_logits(cached, tiny_model), _last_logits(fresh, tiny_model))


def test_layers_packed_in_blocks_are_cached_block_by_block_and_read_back_the_same(tiny_model, tmp_path, monkeypatch):
    """The first run writes a multi-block layer's rows one block at a time; the cache gives the same model."""
    from qwenvl import int8
    from qwenvl.accel import load_model

    _fbgemm_or_skip()
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path))
    monkeypatch.setattr(int8, "FBGEMM_PACK_BYTES", 16 * 64)
    fresh = load_model(tiny_model, "float32", "cpu", "int8")  # quantizes, writes the cache
    assert len(fresh.lm_head._packed) > 1
    blocks = list(fresh.lm_head.int8_row_blocks())
    assert len(blocks) == len(fresh.lm_head._packed) and torch.equal(torch.cat(blocks), fresh.lm_head.int8_data()[0])
    cached = load_model(tiny_model, "float32", "cpu", "int8")
    assert torch.equal(cached.lm_head.int8_data()[0], fresh.lm_head.int8_data()[0])
    assert torch.equal(_last_logits(cached, tiny_model), _last_logits(fresh, tiny_model))


def test_bf16_stored_linear_in_row_blocks_computes_the_whole_product(monkeypatch):
    """The patch mergers' bf16 weights are multiplied in float32 a block of rows at a time."""
    from qwenvl import int8_float32

    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 100).to(torch.bfloat16)
    x = torch.randn(2, 7, 32)
    ref = torch.nn.functional.linear(x, linear.weight.float(), linear.bias.float())
    linear.__class__ = int8_float32.Bf16StoredLinear
    monkeypatch.setattr(int8_float32, "BF16_STORED_ROWS", 16)  # 7 blocks: 6 x 16 + 4
    y = linear(x)
    assert y.dtype == torch.float32 and y.shape == (2, 7, 100)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert linear.weight.dtype == torch.bfloat16


def _bf16_copy(tiny_model, folder):
    """The tiny checkpoint with its weights stored in bfloat16, as the real Qwen3-VL-2B's are."""
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, folder)
    (file,) = Path(folder).glob("*.safetensors")
    tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(file).items()}
    save_file(tensors, file, metadata={"format": "pt"})
    return str(folder)


def test_a_bf16_checkpoints_mergers_are_read_from_the_file_with_the_same_logits(tiny_model, tmp_path, monkeypatch):
    """float32 + int8: the bf16 patch mergers are read from the file at each call (never resident), same logits."""
    from qwenvl import accel
    from qwenvl.int8_float32 import Bf16StoredLinear, FileBf16Linear

    copy = _bf16_copy(tiny_model, tmp_path / "bf16")
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path / "cache"))
    inputs = _inputs(copy)
    model = accel.load_model(copy, "float32", "cpu", "int8")
    from_file = [n for n, m in model.named_modules() if isinstance(m, FileBf16Linear)]
    assert from_file and all("merger" in n for n in from_file)
    assert not any(isinstance(m, Bf16StoredLinear) for m in model.modules())
    got = _logits(model, inputs)

    real = accel.compute_in_float32
    monkeypatch.setattr(accel, "compute_in_float32", lambda m, path=None: real(m))  # no file: kept mapped
    mapped = accel.load_model(copy, "float32", "cpu", "int8")
    assert any(isinstance(m, Bf16StoredLinear) for m in mapped.modules())
    assert torch.equal(got, _logits(mapped, inputs))


def test_quantizing_inside_the_clis_paused_load_collects_as_it_goes(tiny_model, tmp_path, monkeypatch):
    """torchao's quantize_ leaves reference cycles holding each layer's temporaries: with the
    collector paused for the whole load (session.loaded_for_life) they piled up to a 5.0 GB peak
    on the 2B model, so the quantization turns it on and the load pauses it again after."""
    import gc

    from qwenvl.accel import load_model
    from qwenvl.session import loaded_for_life

    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path / "cache"))
    collected = []

    def count(phase, info):
        if phase == "stop" and gc.isenabled():  # an automatic pass, not the load's final one
            collected.append(info["collected"])

    threshold = gc.get_threshold()
    gc.set_threshold(100)  # passes as often as a 2B model's quantization sets them off
    gc.callbacks.append(count)
    try:
        with loaded_for_life():
            logs = []
            load_model(tiny_model, "float32", "cpu", "int8", log=logs.append)
            assert any("quantized" in m for m in logs)
            assert not gc.isenabled()  # paused again for the rest of the load
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*threshold)
    assert sum(collected) > 0  # cycles freed while quantizing, not held to the end


def test_the_first_run_quantizes_in_a_thread_of_its_own_and_its_errors_reach_the_caller(
        tiny_model, tmp_path, monkeypatch):
    """Its own thread, so its own glibc heap (the first run's peak: see int8_cache); with torch's
    thread count; an error inside is raised in the loading thread as itself."""
    from qwenvl import int8_cache
    from qwenvl.accel import load_model

    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path / "cache"))
    seen = []
    quantize = int8_cache.quantize_int8

    def spy(*args):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return quantize(*args)

    monkeypatch.setattr(int8_cache, "quantize_int8", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_model(tiny_model, "float32", "cpu", "int8")
    finally:
        torch.set_num_threads(threads)
    assert seen == [("qwenvl-quantize", 1)]

    def broken(*args):
        raise RuntimeError("no memory for layer 7")

    monkeypatch.setattr(int8_cache, "quantize_int8", broken)
    monkeypatch.setenv("QWENVL_INT8_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(RuntimeError, match="no memory for layer 7"):
        load_model(tiny_model, "float32", "cpu", "int8")
