"""zstd's one-shot compress and decompress, called with the interpreter lock held.

The operator restores and keeps each agent's detector state once or twice a cycle, 10,000 and
more a cycle in a large fleet (core/warmfold.py), beside threads that are busy (kopf's event
loop, the status writer). python-zstandard lets the interpreter lock go for every call, however
short: a restore of 8 KB takes about 0.1 ms of zstd's work, and getting the lock back behind a
busy thread costs up to the switch interval (5 ms). Measured by
``python benchmarks/lock_handoffs.py --states``: a restore beside one and two busy threads took
about 7 and 18 times as long as alone (docs/operator.md, "Scale").

So the calls go to the system's libzstd (Debian's ``libzstd1``, which every Debian image has:
dpkg needs it) through :class:`ctypes.PyDLL`, which keeps the lock for the call. The frames are
zstd's standard format, the same bytes python-zstandard reads and writes (with the content size
in the header and the dictionary's ID), so the two read each other's blobs. Where libzstd cannot
be loaded, :data:`LIB` is None and core/warmfold.py uses python-zstandard, as before.

Only ever handed bytes this process compressed; a blob that does not decompress raises
:class:`ZstdCallError`, naming zstd's reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

_UNKNOWN = (1 << 64) - 1  # ZSTD_CONTENTSIZE_UNKNOWN
_ERROR = (1 << 64) - 2  # ZSTD_CONTENTSIZE_ERROR


class ZstdCallError(ValueError):
    """zstd refused a call (its reason in the message)."""


class _Lib:
    """The few libzstd functions used, typed (each set from the library under its name less
    ``ZSTD_``)."""

    createCCtx: Any
    freeCCtx: Any
    createDCtx: Any
    freeDCtx: Any
    createCDict: Any
    freeCDict: Any
    createDDict: Any
    freeDDict: Any
    compressBound: Any
    compressCCtx: Any
    compress_usingCDict: Any
    decompressDCtx: Any
    decompress_usingDDict: Any
    getFrameContentSize: Any
    isError: Any
    getErrorName: Any

    def __init__(self, dll: Any) -> None:
        size_t, ptr = ctypes.c_size_t, ctypes.c_void_p
        for name, result, args in (
            ("ZSTD_createCCtx", ptr, ()),
            ("ZSTD_freeCCtx", size_t, (ptr,)),
            ("ZSTD_createDCtx", ptr, ()),
            ("ZSTD_freeDCtx", size_t, (ptr,)),
            ("ZSTD_createCDict", ptr, (ptr, size_t, ctypes.c_int)),
            ("ZSTD_freeCDict", size_t, (ptr,)),
            ("ZSTD_createDDict", ptr, (ptr, size_t)),
            ("ZSTD_freeDDict", size_t, (ptr,)),
            ("ZSTD_compressBound", size_t, (size_t,)),
            ("ZSTD_compressCCtx", size_t, (ptr, ptr, size_t, ptr, size_t, ctypes.c_int)),
            ("ZSTD_compress_usingCDict", size_t, (ptr, ptr, size_t, ptr, size_t, ptr)),
            ("ZSTD_decompressDCtx", size_t, (ptr, ptr, size_t, ptr, size_t)),
            ("ZSTD_decompress_usingDDict", size_t, (ptr, ptr, size_t, ptr, size_t, ptr)),
            ("ZSTD_getFrameContentSize", ctypes.c_ulonglong, (ptr, size_t)),
            ("ZSTD_isError", ctypes.c_uint, (size_t,)),
            ("ZSTD_getErrorName", ctypes.c_char_p, (size_t,)),
        ):
            function = getattr(dll, name)
            function.restype, function.argtypes = result, args
            setattr(self, name[5:], function)

    def check(self, code: int, doing: str) -> int:
        if self.isError(code):
            raise ZstdCallError(f"zstd could not {doing}: {self.getErrorName(code).decode()}")
        return code


def _load() -> _Lib | None:
    for name in ("libzstd.so.1", ctypes.util.find_library("zstd")):
        if not name:
            continue
        try:
            return _Lib(ctypes.PyDLL(name))  # PyDLL: the lock is kept for every call
        except (OSError, AttributeError):  # not there, or too old to have these functions
            continue
    return None


LIB: _Lib | None = _load()


class _Owned:
    """A libzstd object, freed with its Python owner."""

    def __init__(self, pointer: int | None, free: Any) -> None:
        if not pointer:
            raise MemoryError("libzstd could not allocate a context")
        self.pointer, self._free = pointer, free

    def __del__(self) -> None:
        self._free(self.pointer)


class Codec:
    """Compress at ``level`` and decompress, with ``dictionary`` (a trained zstd dictionary's
    bytes) or none. One per thread for the contexts (:meth:`contexts`); the dictionary's digested
    forms are shared by the threads."""

    def __init__(self, level: int, dictionary: bytes | None = None, lib: _Lib | None = None) -> None:
        found = lib or LIB
        if found is None:
            raise ZstdCallError("libzstd cannot be loaded")
        self._lib, self.level, self._local = found, level, threading.local()
        self._dictionary = dictionary  # kept: a digested dictionary may refer to these bytes
        self._cdict = self._ddict = None
        if dictionary is not None:
            self._cdict = _Owned(found.createCDict(dictionary, len(dictionary), level), found.freeCDict)
            self._ddict = _Owned(found.createDDict(dictionary, len(dictionary)), found.freeDDict)

    def _context(self, name: str) -> int:
        made: _Owned | None = getattr(self._local, name, None)
        if made is None:
            lib = self._lib
            made = _Owned(lib.createCCtx(), lib.freeCCtx) if name == "c" else _Owned(lib.createDCtx(), lib.freeDCtx)
            setattr(self._local, name, made)
        return made.pointer

    def _out(self, size: int) -> tuple[bytearray, Any]:
        """This thread's buffer for compressed frames, at least ``size`` bytes, and its address."""
        out: bytearray | None = getattr(self._local, "out", None)
        if out is None or len(out) < size:
            out = self._local.out = bytearray(max(size, 64 * 1024))
            self._local.at = ctypes.addressof(ctypes.c_char.from_buffer(out))  # never resized after
        return out, self._local.at

    def compress(self, raw: bytes) -> bytes:
        lib = self._lib
        bound = lib.compressBound(len(raw))
        out, at = self._out(bound)
        if self._cdict is None:
            size = lib.compressCCtx(self._context("c"), at, bound, raw, len(raw), self.level)
        else:
            size = lib.compress_usingCDict(self._context("c"), at, bound, raw, len(raw), self._cdict.pointer)
        with memoryview(out) as view:
            return bytes(view[: lib.check(size, "compress")])

    def decompress(self, blob: bytes) -> bytearray:
        # no ctypes array of the frame's size: each new size would be a new array type, garbage
        # in reference cycles for the collector, thousands a cycle
        lib = self._lib
        size = lib.getFrameContentSize(blob, len(blob))
        if size in (_UNKNOWN, _ERROR):
            raise ZstdCallError("zstd could not decompress: not a frame with its content size")
        out = bytearray(size or 1)
        target = ctypes.c_char.from_buffer(out)  # its address is the bytearray's first byte
        if self._ddict is None:
            done = lib.decompressDCtx(self._context("d"), ctypes.addressof(target), size, blob, len(blob))
        else:
            done = lib.decompress_usingDDict(self._context("d"), ctypes.addressof(target), size, blob, len(blob),
                                             self._ddict.pointer)
        del target  # the bytearray may be resized again
        if lib.check(done, "decompress") != size:
            raise ZstdCallError(f"zstd could not decompress: {done} bytes, the frame says {size}")
        if not size:
            del out[:]
        return out
