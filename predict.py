#!/usr/bin/env python3
"""Qwen3-VL-2B-Instruct command line: see `python predict.py --help`."""
from qwenvl.cli import entry

if __name__ == "__main__":
    entry()
