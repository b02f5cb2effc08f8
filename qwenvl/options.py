"""Typed, frozen options: what the CLI validated, handed to everything below it.

The CLI parses and checks the arguments once and builds an `Options`; no code
below the CLI sees the argparse namespace. Pure data: no I/O, no torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TaskOptions:
    """What to ask: the task, the user's prompt and system prompt, and the task's extras."""

    name: str = "caption"
    prompt: str | None = None  # --prompt as given (None: the task's default)
    system: str | None = None
    schema: dict | None = None  # --schema, loaded and checked (extract)
    retries: int = 2
    annotate: str | None = None  # ground: write the image with its boxes here


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; the session takes these as they are."""

    max_new_tokens: int = 512
    temperature: float = 0.0  # 0: greedy, deterministic
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    loop_guard: bool = True
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens

    def describe(self) -> dict:
        """The settings as a record's `generation` field."""
        info = asdict(self)
        info["do_sample"] = self.temperature > 0
        if not self.ignore_eos:
            info.pop("ignore_eos")
        return info


@dataclass(frozen=True)
class VisionOptions:
    """How images, PDF pages and videos are read and sized."""

    min_pixels: int
    max_pixels: int
    dpi: int
    pages: tuple[int, ...] | None
    fps: float
    max_frames: int
    url_timeout: float
    max_bytes: int

    def load_options(self):
        from .inputs import LoadOptions

        return LoadOptions(url_timeout=self.url_timeout, max_bytes=self.max_bytes, dpi=self.dpi,
                           pages=list(self.pages) if self.pages is not None else None)


@dataclass(frozen=True)
class OutputOptions:
    format: str  # txt, json or jsonl
    path: str | None = None  # --output
    quiet: bool = False
    stream: bool = False


@dataclass(frozen=True)
class BatchOptions:
    sources: tuple[str, ...]
    size: int = 1
    output_dir: str | None = None
    resume: bool = False


@dataclass(frozen=True)
class ModelOptions:
    name: str
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"


@dataclass(frozen=True)
class InputOptions:
    """The sources of a single run, a chat or a history turn."""

    images: tuple[str, ...] = ()  # --image and --images, in order (images or PDFs)
    video: str | None = None
    history: str | None = None


@dataclass(frozen=True)
class Options:
    task: TaskOptions
    generation: GenerationSettings
    vision: VisionOptions
    output: OutputOptions
    model: ModelOptions
    inputs: InputOptions
    batch: BatchOptions | None = None  # set for --batch
    chat: bool = False
