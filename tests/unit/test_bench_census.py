"""benchmarks/census/sitecustomize.py: the heap census operator_scale.py --census takes of the
operator, tried on a process that holds a known number of objects of its own type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import os, sys, time
class Marker:
    __slots__ = ("n",)
    def __init__(self, n):
        self.n = n
held = [Marker(i) for i in range(200_000)]
big = b"x" * (64 << 20)  # written: 64 MiB resident in a mapping of its own
import gc
gc.freeze()  # as the operator does after its first pass
prefix = os.environ["FLEETWARDEN_BENCH_CENSUS"]
open(prefix + ".go", "w").close()
for _ in range(600):
    if os.path.exists(prefix + ".txt"):
        break
    time.sleep(0.1)
print(open(prefix + ".txt").read(), end="")
"""


def test_the_census_counts_a_processs_objects_by_type_and_reads_pymallocs_arenas(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks" / "census"), str(ROOT / "operator")]),
               FLEETWARDEN_BENCH_CENSUS=str(tmp_path / "census"))
    done = subprocess.run([sys.executable, "-c", HOLDER], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    markers = [line for line in lines if line.endswith("__main__.Marker")]
    assert len(markers) == 1, done.stdout
    size_mib, _, count = markers[0].split()[:3]
    assert int(count) == 200_000
    assert float(size_mib) >= 200_000 * sys.getsizeof(object()) / 2**20  # each at least an object's size
    assert any(line.endswith("  int") for line in lines)  # untracked objects reached through their holders
    said = {line.split(":")[0] for line in lines if line.startswith("pymalloc")}
    assert {"pymalloc arenas (1 MiB each)", "pymalloc bytes in objects alive"} <= said, done.stdout
    assert lines[0].startswith("RSS at the census: ") and lines[0].endswith("kB")
    assert lines[1].startswith("RSS by mapping: ") and lines[1].endswith(" MiB")
    parts = dict(part.rsplit(" ", 1) for part in lines[1].removeprefix("RSS by mapping: ").removesuffix(" MiB").split(", "))
    assert int(parts["anonymous"]) >= 64 and int(parts["files"]) > 0, lines[1]
    assert lines[2].startswith("RSS by mapping after malloc_trim(0): ")  # glibc on this machine
    assert done.stderr == ""  # pymalloc's account went to the census, not to the process's stderr


def test_without_the_variable_the_hook_does_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "benchmarks" / "census"))
    env.pop("FLEETWARDEN_BENCH_CENSUS", None)
    code = "import threading, sitecustomize; print(sitecustomize.PREFIX, [t.name for t in threading.enumerate()])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "None ['MainThread']", done.stdout + done.stderr
