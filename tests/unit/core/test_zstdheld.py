"""zstd called with the interpreter lock held (core/zstdheld.py): the same frames as
python-zstandard both ways, errors named, no lock let go during a call, and the kept detector
states (core/warmfold.py) the same through either."""

from __future__ import annotations

import random
import sys
import threading
import time

import bucketed
import pytest
import zstandard

from fleetwarden.core import detectors, fleetgen, spec, warmfold, zstdheld

PARAMS = spec.AnomalyParams()


def _samples(seed: int, n: int = 300) -> list[bytes]:
    """Blobs alike as kept states are (shared words, numbers that differ), some empty."""
    rng = random.Random(seed)
    words = [b"cost_shift", b"runaway_loop", b"tool_call_explosion", b"window", b"baseline", b"agent"]
    out = [b""]
    for _ in range(n):
        parts = [rng.choice(words) + str(rng.random()).encode() for _ in range(rng.randrange(0, 400))]
        out.append(b"|".join(parts) + rng.randbytes(rng.randrange(0, 64)))
    return out


def test_libzstd_is_loaded_here() -> None:
    """The machines the operator and its tests run on (Debian) have libzstd: the lock-held path
    is the one measured and shipped, not the fallback."""
    assert zstdheld.LIB is not None
    assert warmfold._PLAIN.held is not None  # noqa: SLF001


@pytest.mark.parametrize("with_dictionary", [False, True])
def test_frames_are_python_zstandards_both_ways(with_dictionary: bool) -> None:
    samples = _samples(seed=4411)
    trained = zstandard.train_dictionary(8192, samples[1:]) if with_dictionary else None
    codec = zstdheld.Codec(1, trained.as_bytes() if trained else None)
    theirs_c = zstandard.ZstdCompressor(level=1, dict_data=trained)
    theirs_d = zstandard.ZstdDecompressor(dict_data=trained)
    for raw in _samples(seed=4412, n=60):
        ours = codec.compress(raw)
        assert type(ours) is bytes
        assert theirs_d.decompress(ours) == raw
        assert bytes(codec.decompress(ours)) == raw
        assert bytes(codec.decompress(theirs_c.compress(raw))) == raw


def test_a_blob_that_does_not_decompress_is_named() -> None:
    samples = _samples(seed=4413)
    with_dict = zstdheld.Codec(1, zstandard.train_dictionary(8192, samples[1:]).as_bytes())
    plain = zstdheld.Codec(1)
    with pytest.raises(zstdheld.ZstdCallError, match="not a frame"):
        plain.decompress(b"not zstd at all")
    with pytest.raises(zstdheld.ZstdCallError, match="(?i)dictionary"):
        plain.decompress(with_dict.compress(samples[5]))
    frame = plain.compress(samples[7])
    with pytest.raises(zstdheld.ZstdCallError, match="could not decompress"):
        plain.decompress(frame[:-5])  # cut short


def test_a_call_keeps_the_interpreter_lock() -> None:
    """A thread waiting for the interpreter lock runs no Python code while a decompression runs
    (python-zstandard lets the lock go for each call: the waiting thread does run). The switch
    interval is made so long that the main thread only ever lets the lock go where a call does."""
    raw = bytes(range(256)) * (64 * 1024)  # 16 MB: a call long enough for the other thread to run
    codec = zstdheld.Codec(1)
    blob = codec.compress(raw)
    library = zstandard.ZstdDecompressor()
    count = 0
    stop = False

    def spin() -> None:
        nonlocal count
        while not stop:
            count += 1
            if count % 100 == 0:
                time.sleep(0)  # lets the lock go: the main thread gets it back here

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=spin, daemon=True)
    sys.setswitchinterval(100.0)
    try:
        thread.start()
        held, let_go = [], []
        for _ in range(5):
            before = count
            codec.decompress(blob)
            held.append(count - before)
            before = count
            library.decompress(blob)
            let_go.append(count - before)
    finally:
        stop = True
        sys.setswitchinterval(interval)
        thread.join()
    assert held == [0] * 5
    assert sum(let_go) > 0  # the test can tell: the other thread ran during the library's calls


def test_kept_states_restore_the_same_through_either_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Folds keeps states through the lock-held codec; without libzstd (LIB None) through
    python-zstandard. The same state is restored from either's blob, with and without a trained
    dictionary, and each reads the other's."""
    fleet = bucketed.agent_minutes(seed=4414, agents=len(fleetgen.SHAPES), hours=1.0)
    states = []
    for ms in fleet.values():
        fold = detectors.DetectorSet(PARAMS, ms[0].agent, ms[0].namespace)
        for m in ms:
            fold.step(m)
        states.append(warmfold.pickled(fold))
    held_trained = warmfold.Trained(states)
    assert held_trained.held is not None
    held_plain = warmfold._PLAIN  # noqa: SLF001
    monkeypatch.setattr(zstdheld, "LIB", None)
    library_plain = warmfold._Codecs()  # noqa: SLF001
    library_trained = warmfold._Codecs(held_trained.data.as_bytes())  # noqa: SLF001
    assert library_plain.held is None and library_trained.held is None
    for raw in states:
        again = set()
        for writer, reader in ((held_plain, library_plain), (library_plain, held_plain),
                               (held_trained, library_trained), (library_trained, held_trained)):
            blob = writer.compress(raw)
            assert bytes(reader.decompress(blob)) == raw
            monkeypatch.setattr(warmfold, "_PLAIN", reader if writer in (held_plain, library_plain) else held_plain)
            restored = warmfold.loads(blob, None if writer in (held_plain, library_plain) else reader, PARAMS)
            again.add(warmfold.pickled(restored))
        assert len(again) == 1  # the same state (pickled again: not the bytes first pickled, pickle's memo)
