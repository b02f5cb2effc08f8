"""qwenvl: run Qwen3-VL-2B-Instruct on images, PDFs and video from the command line."""

__version__ = "0.1.0"
DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
