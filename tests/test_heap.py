"""glibc's heap after the load (qwenvl/heap.py): freed activations stay for reuse instead of going back to the OS."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process: a 96 MB block (a large activation's size) malloc'd, written and
# freed three times, with glibc's default settings and then after heap.reuse_freed().
# Reported: how much of it the heap keeps once freed (mallinfo2's free bytes) and the
# page faults of the later rounds.
_ROUNDS = r"""
import ctypes, json, resource
from qwenvl import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 96 << 20

def rounds():
    kept, faults = [], []
    for i in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        libc.free(block)
        if i:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        kept.append(libc.mallinfo2().fordblks)
    return {"kept": min(kept), "faults": min(faults)}

default = rounds()
tuned = heap.reuse_freed()
print(json.dumps({"default": default, "tuned": tuned, "after": rounds()}))
"""


def _glibc_or_skip():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's heap: Linux only")
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc 2.33 or later")


def _fresh_process(code: str) -> dict:
    """The JSON object that `code` prints last, run in a fresh Python process (glibc's settings untouched)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_after_reuse_freed_a_freed_activation_stays_in_the_heap_and_is_not_faulted_again():
    _glibc_or_skip()
    out = _fresh_process(_ROUNDS)
    size = 96 << 20
    assert out["tuned"] is True
    # glibc's defaults give a block this large back to the OS when it is freed ...
    assert out["default"]["kept"] < size
    # ... after reuse_freed the heap keeps it, and making it again touches no new pages
    assert out["after"]["kept"] >= size
    assert out["after"]["faults"] < 1000  # 96 MB is 24,576 pages of 4 KB


def test_trim_still_gives_the_kept_memory_back_to_the_os():
    """The loads' malloc_trim (heap.trim) empties the heap after reuse_freed too: the resident set falls."""
    _glibc_or_skip()
    code = _ROUNDS.split("default = rounds()")[0] + (
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS:')).split()[1]) << 10\n"
        "heap.reuse_freed(); rounds(); full = rss(); heap.trim()\n"
        "print(json.dumps({'full': full, 'trimmed': rss()}))\n")
    out = _fresh_process(code)
    assert out["full"] - out["trimmed"] >= 90 << 20


def test_a_model_loaded_on_the_cpu_is_tuned_for_generation(tiny_model, monkeypatch):
    from qwenvl import heap
    from qwenvl.session import ModelSession

    models = []
    monkeypatch.setattr(heap, "tune_for_generation", lambda model: models.append(model) or True)
    session = ModelSession(tiny_model, device="cpu", dtype="float32")
    assert models == [session.model]


def test_the_heap_is_trimmed_once_the_vision_tower_has_run(tiny_model, monkeypatch):
    """Each request with an image trims once, between the vision tower and the language model,
    and one without an image does not (the tower did not run)."""
    from qwenvl import heap
    from qwenvl.options import GenerationSettings
    from qwenvl.session import ModelSession

    monkeypatch.setattr(heap, "reuse_freed", lambda: True)  # glibc's settings of this test process stay as they are
    trims = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(1))
    session = ModelSession(tiny_model, device="cpu", dtype="float32")
    trims.clear()  # the load's own
    image = os.path.join(ROOT, "test_images", "sample.jpg")
    settings = GenerationSettings(max_new_tokens=3)
    session.generate([[{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": "Describe."}]}]], settings)
    assert len(trims) == 1
    session.generate([[{"role": "user", "content": [{"type": "text", "text": "Hello."}]}]], settings)
    assert len(trims) == 1
