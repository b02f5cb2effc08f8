"""Command-line parsing and validation, `main(argv) -> exit code`, and `entry()` (predict.py's).

Everything a user can get wrong in the arguments is found here, before any
input is read or the model loads, and reported as one line with exit code 2.
The arguments are validated once into frozen `Options` (options.py); nothing
below the CLI sees the argparse namespace.
"""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys

from . import DEFAULT_MODEL, __version__
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, QwenVLError, UsageError
from .inputs import DEFAULT_DPI, DEFAULT_MAX_BYTES, DEFAULT_URL_TIMEOUT, parse_pages
from .outputs import FORMATS, format_for_path
from .options import (
    BatchOptions,
    GenerationSettings,
    InputOptions,
    ModelOptions,
    Options,
    OutputOptions,
    TaskOptions,
    VisionOptions,
)
from .prompts import DEFAULT_MIN_PIXELS, TASKS

EPILOG = """\
exit codes: 0 success, 1 an input, model or write failure (batch: any request
failed), 2 a usage error (found before the model loads), 130 interrupted.

examples:
  %(prog)s --image test_images/sample.jpg --task caption
  %(prog)s --image invoice.pdf --task ocr --pages 1-2 --output result.json
  %(prog)s --images a.jpg b.jpg --task vqa --prompt "What changed?"
  %(prog)s --video clip.mp4 --fps 1 --max-frames 16 --prompt "What happens?"
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every usage error
        raise UsageError(message)


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="predict.py",
        description="Caption, OCR and visual question answering with Qwen3-VL-2B-Instruct "
        "on images, PDFs and video.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # predict.sh maps flags to mounts: no shortened spellings
    )
    src = p.add_argument_group("inputs")
    src.add_argument("--image", action="append", default=[], metavar="SRC",
                     help="an image or PDF: a path, http(s) URL, data: URI or - for stdin; repeat it "
                          "to put several images in one prompt")
    src.add_argument("--images", nargs="+", default=[], metavar="SRC",
                     help="several images after one flag (same as repeating --image)")
    src.add_argument("--video", metavar="SRC", help="a video file or URL: one prompt over sampled frames")
    src.add_argument("--history", metavar="FILE",
                     help="JSON file of earlier chat turns; the new turn and its answer are appended to it")

    task = p.add_argument_group("task")
    task.add_argument("--task", choices=list(TASKS), default="caption",
                      help="; ".join(f"{t.name}: {t.help}" for t in TASKS.values()) + " (default: caption)")
    task.add_argument("--prompt", help="the instruction or question; overrides the task's default prompt")
    task.add_argument("--system", help="a system prompt (none by default, like the model's template)")
    task.add_argument("--schema", metavar="FILE", help="JSON Schema for --task extract")
    task.add_argument("--retries", type=_non_negative_int, default=2, metavar="N",
                      help="extract: ask again with the validation error up to N times (default: %(default)s)")
    task.add_argument("--annotate", metavar="OUT.png", help="ground: write the image with the boxes drawn")
    task.add_argument("--stream", action="store_true",
                      help="print the answer as it is generated (one request, txt output to stdout)")
    task.add_argument("--chat", action="store_true",
                      help="interactive conversation over the given images (/image PATH, /save FILE, "
                           "/reset; Ctrl-D ends)")

    out = p.add_argument_group("output")
    out.add_argument("--output", "-o", metavar="PATH", help="write the result here (default: stdout); "
                     "folders are created, the file is written atomically")
    out.add_argument("--format", choices=FORMATS, default=None,
                     help="txt, json or jsonl (default: from the --output extension, else txt; "
                          "batch: jsonl, or json with --output-dir)")
    out.add_argument("--quiet", "-q", action="store_true", help="print nothing but results and errors")

    batch = p.add_argument_group("batch")
    batch.add_argument("--batch", nargs="+", default=None, metavar="SRC",
                       help="many inputs, one result each: files, folders (recursive), globs, URLs, "
                            "@list.txt (one source per line; @- reads the list from stdin)")
    batch.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                       help="requests generated together (default: %(default)s)")
    batch.add_argument("--output-dir", metavar="DIR",
                       help="one result file per input, in --format, named after the input")
    batch.add_argument("--resume", action="store_true",
                       help="skip inputs that already have a successful result in --output / --output-dir")

    model = p.add_argument_group("model")
    model.add_argument("--model", default=os.environ.get("QWENVL_MODEL") or DEFAULT_MODEL,
                       help="hub id or local checkpoint folder (default: $QWENVL_MODEL, else %(default)s)")
    model.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto",
                       help="auto picks cuda, then mps, then cpu; others are obeyed exactly (default: auto)")
    model.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                       help="weights dtype; auto: bfloat16 on cuda (float16 on GPUs without native bf16), "
                            "bfloat16 on mps (float32 before macOS 14), and on cpu bfloat16 only where the CPU "
                            "runs it natively (AVX-512 BF16, AMX), else float32 (default: auto)")

    model.add_argument("--quantize", choices=["none", "int8"], default="none",
                       help="int8: int8 weights for the language model and the vision tower, CPU only; "
                            "decodes 2-3x faster in a third of float32's memory, answers close to but not "
                            "always the same; the int8 weights are cached after the first run (default: none)")

    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=None, metavar="N",
                     help="token limit per answer (default: " +
                          ", ".join(f"{t.name} {t.max_new_tokens}" for t in TASKS.values()) + ")")
    gen.add_argument("--temperature", type=_non_negative_float, default=0.0,
                     help="0 is greedy and deterministic; above 0 samples (default: 0)")
    gen.add_argument("--top-p", type=_positive_float, default=None,
                     help="nucleus sampling, with --temperature > 0 (default: the model's, 0.8)")
    gen.add_argument("--top-k", type=_positive_int, default=None,
                     help="top-k sampling, with --temperature > 0 (default: the model's, 20)")
    gen.add_argument("--repetition-penalty", type=_positive_float, default=None,
                     help="above 1 discourages repeats (default: the model's, 1.0)")
    gen.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    gen.add_argument("--ignore-eos", action="store_true",
                     help="always generate --max-new-tokens tokens (for benchmarks)")
    gen.add_argument("--loop-guard", action=argparse.BooleanOptionalAction, default=True,
                     help="stop an answer that repeats one cycle of tokens, finish_reason "
                          "'repetition' (default: on)")

    vis = p.add_argument_group("images, PDFs and video")
    vis.add_argument("--min-pixels", type=_positive_int, default=DEFAULT_MIN_PIXELS, metavar="N",
                     help="smaller images are upscaled to this many pixels (default: %(default)s, 64 tokens)")
    vis.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N",
                     help="larger images are downscaled to this many pixels; one token is 32x32 pixels "
                          "(default: " + ", ".join(f"{t.name} {t.max_pixels}" for t in TASKS.values()) + ")")
    vis.add_argument("--dpi", type=_positive_int, default=DEFAULT_DPI,
                     help="resolution for rendering PDF pages (default: %(default)s)")
    vis.add_argument("--pages", metavar="SPEC", help="PDF pages to read, like 1-3,5 (default: all)")
    vis.add_argument("--fps", type=_positive_float, default=2.0,
                     help="video frames sampled per second (default: %(default)s)")
    vis.add_argument("--max-frames", type=_positive_int, default=32, metavar="N",
                     help="at most this many video frames, spread over the whole video (default: %(default)s)")

    net = p.add_argument_group("network and limits")
    net.add_argument("--url-timeout", type=_positive_float, default=DEFAULT_URL_TIMEOUT, metavar="SECONDS",
                     help="give up on a URL that does not connect or answer within this time (default: %(default)s)")
    net.add_argument("--max-input-mb", type=_positive_float, default=DEFAULT_MAX_BYTES / 2**20, metavar="MB",
                     help="largest file or download accepted (default: %(default)g)")

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def validate(args: argparse.Namespace) -> Options:
    """Cross-argument checks, then the typed options everything below the CLI takes.

    Raises UsageError (exit 2) for arguments that cannot work; reads nothing but
    the --schema file (an InputError, exit 1, if it is not a JSON Schema).
    """
    sources = tuple(args.image) + tuple(args.images)
    batch = _validate_batch(args)
    if not sources and not args.video and not args.history and batch is None and not args.chat:
        raise UsageError("no input: give --image SRC, --images SRC..., --video SRC or --history FILE")
    if sources.count("-") + (args.video == "-") > 1:
        raise UsageError("standard input (-) can be read only once")
    if args.task == "vqa" and not (args.prompt and args.prompt.strip()):
        raise UsageError("--task vqa needs a question: add --prompt \"...\"")
    if args.task == "ground" and not (args.prompt and args.prompt.strip()):
        raise UsageError("--task ground needs what to find: add --prompt \"the total amount\" (or object names)")
    if args.task == "extract" and not args.schema:
        raise UsageError("--task extract needs --schema FILE (a JSON Schema)")
    if args.schema and args.task != "extract":
        raise UsageError("--schema is for --task extract")
    if args.annotate and args.task != "ground":
        raise UsageError("--annotate is for --task ground")
    if args.annotate and batch is not None:
        raise UsageError("--annotate works on one image, not --batch")
    _validate_stream_and_chat(args)
    if batch is None:
        _validate_single_inputs(args, sources)
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt is empty")
    max_pixels = args.max_pixels if args.max_pixels is not None else TASKS[args.task].max_pixels
    if args.min_pixels > max_pixels:
        raise UsageError(f"--min-pixels {args.min_pixels} is larger than --max-pixels {max_pixels}")
    if max_pixels < 32 * 32:
        raise UsageError(f"--max-pixels {max_pixels} is below one visual token (1024 pixels)")
    if args.top_p is not None and args.top_p > 1:
        raise UsageError(f"--top-p {args.top_p} must be in (0, 1]")
    if args.temperature == 0 and (args.top_p is not None or args.top_k is not None):
        raise UsageError("--top-p and --top-k apply to sampling: add --temperature above 0")
    if not 18 <= args.dpi <= 1200:
        raise UsageError(f"--dpi {args.dpi} is outside 18..1200")
    pages = tuple(parse_pages(args.pages)) if args.pages else None
    if args.fps > 60:
        raise UsageError(f"--fps {args.fps} is above 60")
    if args.max_frames > 768:
        raise UsageError(f"--max-frames {args.max_frames} is above 768, Qwen3-VL's limit")
    if args.history and any(s.lower().endswith(".pdf") for s in sources):
        raise UsageError("--history cannot be combined with a PDF (each page is its own answer)")
    fmt = _output_format(args, batch)
    schema = None
    if args.task == "extract":  # the only file read before the inputs: after every usage check
        from .structured import load_schema

        schema = load_schema(args.schema)
    return Options(
        task=TaskOptions(name=args.task, prompt=args.prompt, system=args.system, schema=schema,
                         retries=args.retries, annotate=args.annotate),
        generation=GenerationSettings(
            max_new_tokens=args.max_new_tokens or TASKS[args.task].max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            repetition_penalty=args.repetition_penalty, seed=args.seed, loop_guard=args.loop_guard,
            ignore_eos=args.ignore_eos),
        vision=VisionOptions(min_pixels=args.min_pixels, max_pixels=max_pixels, dpi=args.dpi, pages=pages,
                             fps=args.fps, max_frames=args.max_frames, url_timeout=args.url_timeout,
                             max_bytes=int(args.max_input_mb * 2**20)),
        output=OutputOptions(format=fmt, path=args.output, quiet=args.quiet, stream=args.stream),
        model=ModelOptions(name=args.model, device=args.device, dtype=args.dtype, quantize=args.quantize),
        inputs=InputOptions(images=sources, video=args.video, history=args.history),
        batch=batch,
        chat=args.chat,
    )


def _output_format(args: argparse.Namespace, batch: BatchOptions | None) -> str:
    if batch is not None:
        if batch.output_dir:
            fmt = args.format or "json"
            if fmt == "jsonl":
                raise UsageError("--output-dir writes one file per input: use --format txt or json")
            return fmt
        fmt = args.format or "jsonl"
        if fmt != "jsonl":
            raise UsageError("batch results are JSON Lines; for txt or json files use --output-dir DIR")
        return fmt
    from_path = format_for_path(args.output)
    fmt = args.format or (from_path if from_path in ("txt", "json") else "txt")
    if fmt == "jsonl":
        raise UsageError("--format jsonl is for --batch; use --format json")
    return fmt


def _validate_single_inputs(args: argparse.Namespace, sources: tuple[str, ...]) -> None:
    """Task and input pairs that one prompt cannot serve (a source's kind is checked again once read)."""
    pdf_names = [s for s in sources if s.lower().endswith(".pdf")]
    if args.task == "ground" and (args.video or not sources or (len(sources) > 1 and len(pdf_names) < len(sources))):
        raise UsageError("--task ground takes exactly one image (or a PDF, page by page)")
    if args.annotate and (args.video or len(sources) != 1 or pdf_names):
        raise UsageError("--annotate takes exactly one image (not a PDF)")
    if args.video and pdf_names:
        raise UsageError("--video cannot be combined with a PDF")
    if args.chat and pdf_names:
        raise UsageError("--chat cannot be combined with a PDF (each page is its own answer)")


def _validate_stream_and_chat(args: argparse.Namespace) -> None:
    if args.stream:
        for flag, bad, why in (
            ("--batch", args.batch is not None, "batch results are records, one per input"),
            ("--format json", args.format in ("json", "jsonl"), "a JSON record is written whole, at the end"),
            ("--output", args.output, "streaming writes to stdout"),
            ("--task " + args.task, args.task in ("ground", "extract"), "its answer is parsed before it is shown"),
        ):
            if bad:
                raise UsageError(f"--stream cannot be combined with {flag}: {why}")
    if args.chat:
        for flag, bad in (("--batch", args.batch is not None), ("--output", args.output),
                          ("--format", args.format), ("--video", args.video), ("--stream", args.stream),
                          ("--task " + args.task, args.task in ("ground", "extract"))):
            if bad:
                raise UsageError(f"--chat cannot be combined with {flag}")


def _validate_batch(args: argparse.Namespace) -> BatchOptions | None:
    if args.batch is None:
        for flag, value in (("--batch-size", args.batch_size != 1), ("--output-dir", args.output_dir),
                            ("--resume", args.resume)):
            if value:
                raise UsageError(f"{flag} needs --batch")
        return None
    for flag, value in (("--image", args.image), ("--images", args.images), ("--video", args.video),
                        ("--history", args.history)):
        if value:
            raise UsageError(f"--batch cannot be combined with {flag}: every batch input is its own request")
    if args.output and args.output_dir:
        raise UsageError("give --output FILE.jsonl or --output-dir DIR, not both")
    if args.resume and not (args.output or args.output_dir):
        raise UsageError("--resume needs --output FILE.jsonl or --output-dir DIR to resume from")
    if args.batch.count("@-") > 1:
        raise UsageError("standard input (@-) can be read only once")
    return BatchOptions(sources=tuple(args.batch), size=args.batch_size, output_dir=args.output_dir,
                        resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Never raises for a user's mistake."""
    from .runner import run

    stderr = sys.stderr
    previous = _install_signal_handlers()
    try:
        try:
            options = validate(build_parser().parse_args(argv))
        except SystemExit as done:  # --help and --version print, then exit 0
            return done.code if isinstance(done.code, int) else 0
        return run(options)
    except UsageError as exc:
        print(f"error: {exc} (see --help)", file=stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=stderr)
        return EXIT_INTERRUPTED
    except QwenVLError as exc:
        print(f"error: {exc}", file=stderr)
        return exc.exit_code
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("QWENVL_DEBUG"):
            raise
        detail = " ".join(str(exc).split())[:300]
        print(f"error: internal error ({type(exc).__name__}: {detail}); rerun with QWENVL_DEBUG=1 "
              "for the traceback and please report it", file=stderr)
        return 1
    finally:
        _restore_signal_handlers(previous)


def entry():
    """predict.py's entry: `main()`, then the process ends with its exit code, without the
    interpreter's teardown.

    That teardown frees, object by object, the model, torch and transformers, memory the
    system takes back anyway: from `main`'s return to the process's end as its parent sees
    it, 0.21-0.24 s against 0.38-0.47 s (int8) and 0.62-0.70 s against 0.80-0.82 s (float32,
    whose 13 GB the system takes a while to free), 2B model, 2 cores. Nothing is lost: what the
    CLI writes is complete when `main` returns (output files are replaced whole, sinks
    write through file descriptors), threads are waited for, every other exit handler has
    run (this one is registered before torch and the libraries import, so it runs last), and
    stdout and stderr are flushed here. After an uncaught exception (QWENVL_DEBUG) the
    interpreter ends as usual.
    """
    code: list[int] = []
    atexit.register(end_process, code)
    code.append(main())
    raise SystemExit(code[0])


def end_process(code: list[int]) -> None:
    """The exit handler `entry` registers: ends the process with code[0] (nothing when empty)."""
    if not code:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with that descriptor closed
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code[0])


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _install_signal_handlers():
    """SIGTERM behaves like Ctrl-C: finished results are kept, exit 130."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        return None


def _restore_signal_handlers(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass
