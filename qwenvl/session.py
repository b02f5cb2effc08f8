"""The model session: loads Qwen3-VL once, then generates for chat messages.

It imports torch and transformers lazily (as does accel.py, which loads and
speeds up the model for it), so `--help` and usage errors stay instant. It
knows nothing of argparse, paths or output formats: it takes a list of
conversations whose image items hold PIL images and returns, for each, text
with its finish reason and token counts.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import GenerationError, ModelError, first_line
from .options import GenerationSettings
from .prompts import is_image, is_video

# Files a checkpoint needs. Weights only as safetensors: pickled .bin files are
# never downloaded or loaded.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]

# Loop guard: stop when the newest tokens are one cycle of at most MAX_PERIOD
# tokens repeated, over at least max(MIN_REPEATS * period, MIN_SPAN) tokens.
LOOP_MAX_PERIOD = 100
LOOP_MIN_REPEATS = 4
LOOP_MIN_SPAN = 256


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop", "length" or "repetition"
    prompt_tokens: int
    completion_tokens: int
    preprocess_s: float = 0.0
    generate_s: float = 0.0

    @property
    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve_model_path(model: str, log: Callable[[str], None] = lambda s: None) -> str:
    """A local folder, a cached hub snapshot, or a fresh download; else ModelError."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {model!r} has no config.json: is it a Hugging Face checkpoint?")
        return str(path)
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_like_path:
        raise ModelError(f"model folder {model!r} does not exist (--model takes a folder or a hub id like {DEFAULT_HUB_ID})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    try:
        return snapshot_download(model, allow_patterns=CHECKPOINT_PATTERNS, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    advice = (
        f"model {model!r} is not a local folder, is not in the Hugging Face cache ({cache})"
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise ModelError(f"{advice}, and HF_HUB_OFFLINE is set; pass --model /path/to/checkpoint (or set QWENVL_MODEL)")
    reason = _hub_unreachable()
    if reason:
        raise ModelError(
            f"{advice}, and cannot be downloaded ({reason}); pass --model /path/to/checkpoint (or set QWENVL_MODEL)"
        )
    log(f"downloading {model} to {cache} (about 4.3 GB for Qwen3-VL-2B, once)")
    try:
        return snapshot_download(model, allow_patterns=CHECKPOINT_PATTERNS)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"{advice}, and the download failed ({first_line(exc)}); "
                         "pass --model /path/to/checkpoint") from None


DEFAULT_HUB_ID = "Qwen/Qwen3-VL-2B-Instruct"


def _hub_unreachable(timeout: float = 10.0) -> str | None:
    """One quick request to the hub: the hub client itself retries for minutes."""
    import requests
    from huggingface_hub import constants

    try:
        requests.head(constants.ENDPOINT, timeout=timeout, allow_redirects=True)
    except requests.exceptions.RequestException as exc:
        text = str(exc)
        if "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
            return f"{constants.ENDPOINT} is unreachable: name lookup failed"
        return f"{constants.ENDPOINT} is unreachable: {type(exc).__name__}"
    return None


class ModelSession:
    """Holds the processor and model; `generate` runs any number of requests."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto",
                 log: Callable[[str], None] = lambda s: None, quantize: str = "none"):
        t0 = time.perf_counter()
        self.log = log
        self.model_name = model
        from . import device as devices

        self.device = devices.resolve_device(device, log)
        self.path = resolve_model_path(model, log)
        weights = sum(f.stat().st_size for f in Path(self.path).glob("*.safetensors")) or None
        self.dtype, reason = devices.choose_dtype(dtype, self.device, quantize, weights, log)
        self.device_info = devices.device_info(self.device, self.dtype, reason, quantize)
        from .accel import load_model, start_packing

        self.quantize = quantize
        # int8 with fbgemm: its weights are packed in background threads while transformers,
        # the processor and the model load
        packing = start_packing(self.path, self.dtype, self.device, quantize)
        try:
            _quiet_libraries()
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.path, trust_remote_code=False)
            self.model = load_model(self.path, self.dtype, self.device, quantize, log, packing)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot load model {model!r} from {self.path}: {first_line(exc)}") from None
        finally:
            if packing is not None:
                packing.close()
        if self.device == "cpu":  # generation's activations reuse the heap from now on (qwenvl/heap.py)
            from . import heap

            heap.tune_for_generation(self.model)
        self.processor.tokenizer.padding_side = "left"
        self.tokenizer = self.processor.tokenizer
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]
        self.load_s = time.perf_counter() - t0

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0 and im_end not in ids:
            ids.insert(0, im_end)
        return ids

    def prompt_texts(self, conversations: list[list[dict]]) -> list[str]:
        """The chat template's text for each conversation; several images are labelled "Picture N: "."""
        return [
            self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True,
                                               add_vision_id=needs_vision_ids(conv))
            for conv in conversations
        ]

    def prepare(self, conversations: list[list[dict]]):
        """Chat template + vision preprocessing for a list of conversations."""
        from qwen_vl_utils import process_vision_info

        texts = self.prompt_texts(conversations)
        images, videos, video_kwargs = process_vision_info(
            conversations, image_patch_size=16, return_video_kwargs=True, return_video_metadata=True
        )
        metadata = None
        if videos is not None:
            videos, metadata = (list(x) for x in zip(*videos))
        inputs = self.processor(
            text=texts,
            images=images,
            videos=videos,
            video_metadata=metadata,
            do_resize=False,
            padding=True,
            return_tensors="pt",
            **video_kwargs,
        )
        return inputs.to(self.model.device)

    def generate(
        self,
        conversations: list[list[dict]],
        settings: GenerationSettings,
        on_text: Callable[[str], None] | None = None,
    ) -> list[Generation]:
        """Generate one answer per conversation, together in one batch."""
        import torch

        t0 = time.perf_counter()
        try:
            inputs = self.prepare(conversations)
        except ValueError as exc:
            raise GenerationError(f"preprocessing failed: {exc}") from None
        t1 = time.perf_counter()
        prompt_len = inputs["input_ids"].shape[1]
        guard = _LoopGuard(prompt_len) if settings.loop_guard else None
        kwargs = self._generation_kwargs(settings)
        if guard is not None:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([guard])
        if on_text is not None:
            kwargs["streamer"] = _CallbackStreamer(self.tokenizer, on_text)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **kwargs)
        except torch.OutOfMemoryError:
            _free_memory()
            raise GenerationError("out of memory during generation (try --max-pixels, a smaller --batch-size or --max-new-tokens)") from None
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
                _free_memory()
                raise GenerationError("out of memory during generation (try --max-pixels, a smaller --batch-size or --max-new-tokens)") from None
            raise
        t2 = time.perf_counter()
        results = []
        attention = inputs["attention_mask"]
        for row in range(output.shape[0]):
            new = output[row, prompt_len:].tolist()
            finish = "length"
            cut = len(new)
            for i, tok in enumerate(new):
                if tok in self.eos_ids and not settings.ignore_eos:
                    finish, cut = "stop", i + 1
                    break
            if finish == "length" and guard is not None and guard.flagged.get(row):
                finish = "repetition"
                cut = min(cut, guard.flagged[row])
            tokens = new[:cut]
            text = self.tokenizer.decode(
                [t for t in tokens if t not in self.eos_ids], skip_special_tokens=True
            ).strip()
            results.append(
                Generation(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=int(attention[row].sum()),
                    completion_tokens=len(tokens),
                    preprocess_s=t1 - t0,
                    generate_s=t2 - t1,
                )
            )
        return results

    def _generation_kwargs(self, settings: GenerationSettings) -> dict:
        import copy

        config = copy.deepcopy(self.model.generation_config)
        sample = settings.temperature > 0
        config.do_sample = sample
        config.max_new_tokens = settings.max_new_tokens
        config.pad_token_id = self.pad_id
        if sample:
            config.temperature = settings.temperature
            if settings.top_p is not None:
                config.top_p = settings.top_p
            if settings.top_k is not None:
                config.top_k = settings.top_k
        else:  # greedy: sampling knobs would only raise warnings
            config.temperature = None
            config.top_p = None
            config.top_k = None
        if settings.repetition_penalty is not None:
            config.repetition_penalty = settings.repetition_penalty
        if settings.ignore_eos:
            config.eos_token_id = None
            config.min_new_tokens = settings.max_new_tokens
        else:
            config.eos_token_id = self.eos_ids
        return {"generation_config": config}


def needs_vision_ids(conversation: list[dict]) -> bool:
    """Label images "Picture N: " (and videos "Video N: ") when a conversation holds more than one,
    as Qwen does, so that "the second image" means something."""
    images = videos = 0
    for message in conversation:
        content = message.get("content")
        for item in content if isinstance(content, list) else []:
            if is_image(item):
                images += 1
            elif is_video(item):
                videos += 1
    return images > 1 or videos > 1


@contextmanager
def loaded_for_life():
    """Load what the process keeps until it exits (the CLI's one model) with the collector paused.

    Python's cyclic collector walks every object it tracks at each full pass: torch,
    transformers and the model leave about 850,000 of them. The passes that the load set
    off (8 for the 2B model, up to 0.25 s each: 1.3 s of the load) and those at exit were
    about a tenth of a 23 s int8 request on 2 cores. While loading, the collector is
    paused; at the end what the load made is frozen (`gc.freeze`): later passes skip it.
    The load's own cyclic garbage is frozen with it, unless CUDA was used: on the CPU it
    is 13,000-15,500 small objects (6-7 MB, none of them a tensor; 2B model, float32 and
    int8), which a full pass would take 0.35-0.38 s to find, while on a GPU a cycle
    holding a tensor would hold device memory, so there it is collected first. After a
    failed load the collector is only resumed. (int8's quantization turns it on while it
    runs.)
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if _cuda_used():
            gc.collect()
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def _cuda_used() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _quiet_libraries() -> None:
    """Library progress bars and advice go nowhere: stderr is ours."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    for name in ("torch.utils._pytree", "torchao", "qwen_vl_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


class _LoopGuard:
    """A stopping criterion: flags rows whose newest tokens repeat one short cycle."""

    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len
        self.flagged: dict[int, int] = {}  # row -> tokens kept (one cycle)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = []
        for row in range(input_ids.shape[0]):
            if row in self.flagged:
                done.append(True)
                continue
            seq = input_ids[row, self.prompt_len:].tolist()
            cut = detect_loop(seq)
            if cut is not None:
                self.flagged[row] = cut
            done.append(cut is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def detect_loop(seq: list[int]) -> int | None:
    """If `seq` ends in a repeated cycle, the length to keep (up to one cycle); else None."""
    n = len(seq)
    if n < LOOP_MIN_SPAN:
        return None
    last = seq[-1]
    for period in range(1, min(LOOP_MAX_PERIOD, n // LOOP_MIN_REPEATS) + 1):
        if seq[-1 - period] != last:
            continue
        window = max(period * LOOP_MIN_REPEATS, LOOP_MIN_SPAN)
        if window + period > n:
            continue
        if seq[n - window:] == seq[n - window - period:n - period]:
            start = n - window - period
            while start > 0 and seq[start - 1] == seq[start - 1 + period]:
                start -= 1
            return start + period  # keep the text before the loop and one cycle of it
    return None


class _CallbackStreamer:
    """Decodes tokens as they come and hands finished text pieces to a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        from transformers import TextStreamer

        outer_on_text = on_text

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    outer_on_text(text)

        self._inner = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

    def put(self, value):
        self._inner.put(value)

    def end(self):
        self._inner.end()
