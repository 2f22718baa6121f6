"""A census of a process's heap, for ``benchmarks/operator_scale.py --census`` (never installed).

Put on the ``PYTHONPATH`` of one process only, with ``FLEETWARDEN_BENCH_CENSUS=PREFIX``: when
the file ``PREFIX.go`` appears, a thread of that process walks every object reachable from the
garbage collector's (``gc.get_objects``, then ``gc.get_referents`` down to the untracked ones:
strings, numbers, bytes), sums ``sys.getsizeof`` per type (and per shape for dicts and sets:
their first keys, the types of their first elements; tuples by length and element types; ``bytes`` also by the type of the object
that holds them: the packed minutes, the kept detector states, the kept statuses), reads CPython's own account of its
small-object allocator (``sys._debugmallocstats``; for that call the process's stderr goes to
the census) and writes both to ``PREFIX.txt``. Before the walk it reads the resident memory
by kind of mapping, gives glibc's free pages back (``malloc_trim``) and reads it again. The
walk holds the process for about a minute at 10,000 budgets and its set of ids costs hundreds
of MiB: take it after what is measured, never during.
"""

from __future__ import annotations

import os

PREFIX = os.environ.get("FLEETWARDEN_BENCH_CENSUS")
TOP = 30
SHAPE_KEYS, SHAPE_WIDTH = 6, 160  # a dict's shape: its first keys, sorted, this long at most
# what names each line of sys._debugmallocstats kept, and what the line says
PYMALLOC = {
    "# arenas allocated current": "arenas (1 MiB each)",
    "# bytes in allocated blocks": "bytes in objects alive",
    "# bytes in available blocks": "bytes free in pools partly used",
    " unused pools * ": "bytes in empty pools",
}


def pymalloc_lines(text: str) -> list[str]:
    """The lines of ``sys._debugmallocstats`` output that say how its arenas are used."""
    return [f"pymalloc {said}: {line.split('=')[-1].strip()}"
            for line in text.splitlines() for name, said in PYMALLOC.items() if name in line]


def rss_parts() -> str:
    """The process's resident memory by kind of mapping (``/proc/self/smaps``), in MiB: glibc's
    main heap (``[heap]``), anonymous mappings (Python's 1 MiB arenas, glibc's other arena, large
    blocks of their own, the threads' stacks), files (code and libraries), the main stack."""
    import collections

    parts: collections.Counter[str] = collections.Counter()
    kind = "?"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):  # a mapping's first line: address range, perms, offset, dev, inode, path
                fields = line.split(None, 5)
                path = fields[5].strip() if len(fields) > 5 else ""
                kind = path if path.startswith("[") else ("files" if path else "anonymous")
            elif first == "Rss:":
                parts[kind] += int(line.split()[1])
    return ", ".join(f"{kind} {kb / 1024:.0f}" for kind, kb in parts.most_common() if kb >= 1024) + " MiB"


def trim() -> bool:
    """glibc's ``malloc_trim(0)`` (its free pages back to the system); False elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def census() -> str:
    """The heap's census, as text: RSS, the objects by type (largest first), pymalloc's account."""
    import collections
    import gc
    import sys
    import tempfile
    import threading
    import time

    started = time.monotonic()
    with open("/proc/self/status") as status:
        rss = [line.split(":", 1)[1].strip() for line in status if line.startswith("VmRSS")]
    resident = [f"RSS by mapping: {rss_parts()}"]
    if trim():  # what of glibc's free memory was resident: given back now (before the walk allocates)
        resident.append(f"RSS by mapping after malloc_trim(0): {rss_parts()}")
    with tempfile.TemporaryFile("w+") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)  # the C-level stderr, where _debugmallocstats writes
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        pymalloc = pymalloc_lines(err.read())
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    shape_counts: collections.Counter[str] = collections.Counter()
    shape_sizes: collections.Counter[str] = collections.Counter()
    held_counts: collections.Counter[str] = collections.Counter()  # bytes objects by their holder's type
    held_sizes: collections.Counter[str] = collections.Counter()
    # the collector's objects, and the modules and the threads' frames: objects frozen by
    # gc.freeze (the operator freezes once after its first pass) are not in gc.get_objects
    seen: set[int] = set()
    stack: list[object] = []
    # not the census' own: its set of ids and its stack (millions of ints), its thread's frames
    seen.update((id(seen), id(stack)))
    me = threading.get_ident()
    frames = [frame for thread, frame in sys._current_frames().items() if thread != me]
    for o in [*gc.get_objects(), *sys.modules.values(), *frames]:
        if id(o) not in seen:
            seen.add(id(o))
            stack.append(o)
    i = 0
    while i < len(stack):
        o = stack[i]
        i += 1
        kind = type(o)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        counts[name] += 1
        size = sys.getsizeof(o, 0)  # (the default: an object that cannot say)
        sizes[name] += size
        if kind is tuple and isinstance(o, tuple):  # which: by length and the types of the first elements
            shape = f"tuple of {len(o)}: {[type(x).__name__ for x in o[:SHAPE_KEYS]]}"[:SHAPE_WIDTH]
            shape_counts[shape] += 1
            shape_sizes[shape] += sys.getsizeof(o, 0)
        if (kind is dict or kind is set) and isinstance(o, (dict, set)):  # which: by first keys, element types
            try:
                first = list(o)[:SHAPE_KEYS]
                if isinstance(o, dict):
                    shape = "dict " + repr(sorted(map(str, first)))[:SHAPE_WIDTH]
                else:
                    shape = f"set of {sorted({type(x).__name__ for x in first})}, {'<=8' if len(o) <= 8 else '>8'} elements"
            except RuntimeError:  # changed by another thread while read
                shape = f"{kind.__name__} (changed while read)"
            shape_counts[shape] += 1
            shape_sizes[shape] += size
        for r in gc.get_referents(o):
            if id(r) not in seen:
                seen.add(id(r))
                stack.append(r)
                if type(r) is bytes:  # who holds the large blobs: the first holder the walk met
                    held_counts[name] += 1
                    held_sizes[name] += sys.getsizeof(r, 0)
    lines = [f"RSS at the census: {rss[0] if rss else 'unknown'}", *resident,
             f"objects: {len(stack)}, {sum(sizes.values()) / 2**20:.1f} MiB by sys.getsizeof, "
             f"walked in {time.monotonic() - started:.0f}s",
             *pymalloc]
    lines += [f"{size / 2**20:9.1f} MiB {counts[name]:10d}  {name}" for name, size in sizes.most_common(TOP)]
    lines += ["dicts and sets by their first keys (elements' types), tuples by length and elements' types:"]
    lines += [f"{size / 2**20:9.1f} MiB {shape_counts[shape]:10d}  {shape}" for shape, size in shape_sizes.most_common(TOP)]
    lines += ["bytes by the type of the object the walk found them in:"]
    lines += [f"{size / 2**20:9.1f} MiB {held_counts[name]:10d}  {name}" for name, size in held_sizes.most_common(TOP // 4)]
    return "\n".join(lines) + "\n"


def _watch(prefix: str) -> None:
    import time

    while not os.path.exists(prefix + ".go"):
        time.sleep(1)
    text = census()
    with open(prefix + ".part", "w") as f:
        f.write(text)
    os.replace(prefix + ".part", prefix + ".txt")


if PREFIX:
    import threading

    threading.Thread(target=_watch, args=(PREFIX,), daemon=True, name="heap-census").start()
