"""engine.memory: with the lean allocator, freed feature maps go back to the OS (peak RSS follows live tensors)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = r"""
import sys, torch
from engine.memory import lean_allocator
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) // 1024
if sys.argv[1] == "lean":
    assert lean_allocator()
big = torch.ones(4 * 2**20)  # a 16 MB map freed: glibc's dynamic mmap threshold climbs to 16 MB
del big
maps = [torch.ones(3 * 2**18) for _ in range(200)]  # 200 x 3 MB, now from the heap unless the threshold is fixed
before = rss()
del maps[::2]
print(before - rss())
"""


def _returned_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_lean_allocator_returns_freed_maps_to_the_os():
    lean, default = _returned_mb("lean"), _returned_mb("default")
    assert lean >= 270, lean  # 100 freed maps of 3 MB
    assert default < lean / 2, (default, lean)  # what the policy is for: glibc alone keeps them in a holey heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_the_engine_thread_sets_the_policy():
    code = ("import engine.memory as m; print(m._applied); from engine.api import Engine; Engine(runner=lambda *a: None); "
            "print(m._applied)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["[]", f"[{1 << 20}]"]
