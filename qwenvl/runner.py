"""Runs validated options: reads the inputs, loads the model once, runs the requests, writes.

Inputs are read and checked before the model loads, so a missing file fails in
well under a second. This module only turns a single run's inputs (images,
PDF pages, a video, a --history file) into requests for the pipeline and its
records into output; --batch and --chat have their own modules.
"""
from __future__ import annotations

import json
import sys
import time

from .errors import EXIT_FAILURE, EXIT_OK, QwenVLError, UsageError
from .history import load_history
from .inputs import Media, PdfInput, data_uri, load_image_source, load_video, read_bytes, redact
from .log import Log
from .options import Options
from .outputs import StdoutStream, atomic_write, page_marker, write_stdout
from .pipeline import Pipeline, Request, open_session
from .prompts import assistant_turn, user_turn
from .sinks import RecordSink


def run(options: Options) -> int:
    log = Log(options.output.quiet)
    if options.batch is not None:
        from .batch import run_batch

        return run_batch(options, log)
    return _run_single(options, log)


def _run_single(options: Options, log: Log) -> int:
    t_start = time.perf_counter()
    opts = options.vision.load_options()
    sources = options.inputs.images

    # 1. Every input is read and checked before the model loads.
    stdin_bytes = None
    media: list[Media] = []
    pdfs: list[PdfInput] = []
    stored_sources: list[str] = []
    for src in sources:
        if src == "-":
            stdin_bytes = read_bytes("-", opts)
        loaded = load_image_source(src, opts, stdin=_BytesStdin(stdin_bytes) if src == "-" else None)
        if isinstance(loaded, PdfInput):
            pdfs.append(loaded)
        else:
            media.append(loaded)
            stored_sources.append(data_uri(stdin_bytes) if src == "-" else _storable(src, log))
            for note in loaded.notes:
                log.warn(f"{loaded.source}: {note}")
    _check_sniffed(options, media, pdfs)
    video = None
    if options.inputs.video:
        video = load_video(options.inputs.video, opts, options.vision.fps, options.vision.max_frames)
        log(f"video {video.source}: {len(video.frames)} frames at {video.sample_fps:g} fps")
        for note in video.notes:
            log.warn(f"{video.source}: {note}")
    stored_history, history = [], []
    if options.inputs.history:
        stored_history, history = load_history(options.inputs.history, options.vision, opts, options.task.system)

    # 2. The model loads once.
    pipeline = Pipeline(open_session(options.model, log), options)
    if options.chat:
        from .chat import run_chat

        return run_chat(pipeline, media, stored_sources, stored_history, history)
    stream = StdoutStream() if options.output.stream else None
    if pdfs:
        record, exit_code = _run_pages(pipeline, pdfs, log, stream)
    else:
        request = Request(images=media, video=video, history=history)
        (result,) = pipeline.run([request], on_text=stream)
        if stream:  # a failed generation may have streamed part of an answer: its line is closed too
            stream.end_line(always=result.generated)
        if result.error is not None and not result.generated:
            raise result.error  # nothing was answered: one error line, exit 1
        record, exit_code = result.record, EXIT_OK
        if result.error is not None:
            source = media[0].source if media else "answer"
            print(f"error: {source}: {result.error}", file=sys.stderr)
            exit_code = EXIT_FAILURE
        if record["finish_reason"] == "length":
            log.warn(f"the answer stopped at the token limit ({options.generation.max_new_tokens}); "
                     "raise --max-new-tokens")
        elif record["finish_reason"] == "repetition":
            log.warn("the answer repeated itself and was stopped (loop guard); see --no-loop-guard")

    record["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
    if not stream and (options.output.format == "json" or exit_code == EXIT_OK or record.get("pages")):
        # a failed parse prints no text result; its JSON record keeps the raw answer
        RecordSink(options.output.path, options.output.format).write(record)
    if options.inputs.history and record.get("finish_reason"):
        video_source = _storable(options.inputs.video, log) if options.inputs.video else None
        new_turns = stored_history + [user_turn(stored_sources, record["prompt"], video=video_source),
                                      assistant_turn(record["text"])]
        atomic_write(options.inputs.history, json.dumps(new_turns, indent=2, ensure_ascii=False) + "\n")
    log(f"done in {record['timings']['total_s']:.1f} s")
    return exit_code


def _check_sniffed(options: Options, media: list[Media], pdfs: list[PdfInput]) -> None:
    """What the CLI could not see from the names alone: which sources are PDFs."""
    if pdfs and media:
        raise UsageError("a PDF cannot share one prompt with other images: give them in separate runs")
    if pdfs and options.inputs.history:
        raise UsageError("--history cannot be combined with a PDF (each page is its own answer)")
    if pdfs and options.inputs.video:
        raise UsageError("--video cannot be combined with a PDF")
    if pdfs and options.chat:
        raise UsageError("--chat cannot be combined with a PDF (each page is its own answer)")
    if options.vision.pages and not pdfs:
        raise UsageError("--pages applies to PDFs, but no input is a PDF")
    if options.task.name == "ground" and not pdfs and len(media) != 1:
        raise UsageError("--task ground takes exactly one image (or a PDF, page by page)")
    if options.task.annotate and (pdfs or len(media) != 1):
        raise UsageError("--annotate takes exactly one image (not a PDF)")


def _run_pages(pipeline: Pipeline, pdfs: list[PdfInput], log: Log, stream) -> tuple[dict, int]:
    """Each PDF page is its own request; one record holds them all."""
    document = pipeline.new_document()
    exit_code = EXIT_OK
    total_pages = sum(len(p.page_numbers) for p in pdfs)
    done = 0
    for pdf in pdfs:
        for number in pdf.page_numbers:
            done += 1
            log(f"page {number} of {pdf.source} ({done}/{total_pages})")
            try:
                page = pdf.render(number)
                for note in page.notes:
                    log.warn(f"{pdf.source} page {number}: {note}")
                document["inputs"].append(page.describe())
                if stream:
                    write_stdout(page_marker(pdf.source, number) + "\n", sys.stdout)
                (result,) = pipeline.run([Request(images=[page])], on_text=stream)
                if stream:
                    stream.end_line()
                entry = pipeline.add_page(document, pdf.source, number, result)
            except QwenVLError as exc:
                entry = pipeline.add_page(document, pdf.source, number, exc)
            if entry["error"] is not None:
                print(f"error: {pdf.source} page {number}: {entry['error']['message']}", file=sys.stderr)
                exit_code = EXIT_FAILURE
        pdf.close()
    pipeline.finish_document(document)
    return document, exit_code


def _storable(source: str, log) -> str:
    """A source as written to a history file: a URL's user:password is never stored."""
    safe = redact(source)
    if safe != source:
        log.warn(f"{safe}: the URL's user:password is not stored in the history file")
    return safe


class _BytesStdin:
    """Stands in for stdin once its bytes were read."""

    def __init__(self, data: bytes):
        self._data = data

    def read(self, n: int = -1) -> bytes:
        return self._data

