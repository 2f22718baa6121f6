"""Candidate native ingest libraries beside a bare orjson loop, one core, one process per run.

    python benchmarks/ingest_candidates.py FILE.jsonl MODE

MODE: orjson (the floor: one ``orjson.loads`` per line), msgspec-any (msgspec to dicts),
msgspec-struct (msgspec into typed Structs, one per event type: parse and validate in C),
pyarrow (``pyarrow.json.read_json``), polars (``read_ndjson``; set POLARS_MAX_THREADS=1),
duckdb (``read_json``, threads=1), duckdb-bucket (the same, grouped into agent-minutes).
Prints the mode, the rows and the seconds. The libraries are not all dependencies of the
project: run it in a throwaway virtualenv that has them (docs/design.md, "Replay throughput").
"""
# mypy: ignore-errors
# (msgspec reads the Struct annotations at run time: no `from __future__ import annotations`)

import sys
import time
from typing import Annotated


def lines(path, loads):
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            loads(line)
            n += 1
    return n


def msgspec_struct(path):
    import msgspec

    NE = Annotated[str, msgspec.Meta(min_length=1)]  # noqa: N806
    NN = Annotated[int, msgspec.Meta(ge=0)]  # noqa: N806
    NF = Annotated[float, msgspec.Meta(ge=0)]  # noqa: N806

    class Base(msgspec.Struct, tag_field="type", kw_only=True):
        time: str | float
        agent: NE
        namespace: NE = "default"
        labels: dict[str, str] = {}
        workflow: str | None = None
        step: str | None = None
        agent_version: str | None = None
        task_id: NE | None = None
        cost_usd: NF | None = None

    class Llm(Base, tag="llm"):
        task_id: NE
        model: NE
        input_tokens: NN
        output_tokens: NN
        provider: str | None = None

    class Tool(Base, tag="tool"):
        task_id: NE
        tool: NE
        status: str = "ok"

    class Task(Base, tag="task"):
        task_id: NE
        status: str

    class Outcome(Base, tag="outcome"):
        task_id: NE
        outcome: NE
        count: float = 1
        value_usd: float | None = None

    class Human(Base, tag="human"):
        minutes: NF

    return lines(path, msgspec.json.Decoder(Llm | Tool | Task | Outcome | Human).decode)


def duckdb_query(path, sql):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads=1")
    return len(con.execute(sql.format(src=f"read_json('{path}', format='newline_delimited')")).fetchall())


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    if mode == "orjson":
        import orjson

        n = lines(path, orjson.loads)
    elif mode == "msgspec-any":
        import msgspec

        n = lines(path, msgspec.json.Decoder().decode)
    elif mode == "msgspec-struct":
        n = msgspec_struct(path)
    elif mode == "pyarrow":
        import pyarrow as pa
        import pyarrow.json as pj

        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        n = pj.read_json(path, read_options=pj.ReadOptions(use_threads=False, block_size=1 << 24)).num_rows
    elif mode == "polars":
        import polars as pl

        n = pl.read_ndjson(path).height
    elif mode == "duckdb":
        n = duckdb_query(path, "select * from {src}")
    elif mode == "duckdb-bucket":
        n = duckdb_query(path, "select agent, floor(time / 60) * 60 as m, count(*), sum(cost_usd), "
                               "sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) from {src} group by all")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(mode, n, round(time.perf_counter() - t0, 2), flush=True)


if __name__ == "__main__":
    main()
