"""The verifier's per-bundle checks on every core: a process pool (hashing, gzip and
JSON decoding hold the GIL, so threads would not scale).

`processes(n)` is a `signing.verify.Mapper`: tasks go to the workers in chunks, the
reader and trust are sent once per worker (not per chunk), and outcomes come back
in the tasks' order, so `verify_store` reduces them exactly as it does one
process's. The reader must pickle (a `DirectoryReader` or a `file://` store).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from signing.canonical import gc_paused
from signing.ordered import in_order
from signing.verify import (
    BundleOutcome,
    BundleTask,
    Mapper,
    ObjectReader,
    Trust,
    check_bundle,
    in_process,
)

# Below this, `gamsa verify` (without --workers) checks in its own process: starting
# forkserver workers (~0.5 s) costs more than a few hundred bundles take.
POOL_MIN_BUNDLES = 256
CHUNK_BUNDLES = 64  # bundles per task sent to a worker: amortises the pickling round trip
MAX_CHUNK_BUNDLES = 512

_worker: tuple[ObjectReader, Trust] | None = None


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def chunks(tasks: list[BundleTask], workers: int, per_worker: int = 8,
           largest: int = MAX_CHUNK_BUNDLES) -> list[list[BundleTask]]:
    """Tasks cut into chunks: about `per_worker` per worker (so a slow chunk does not
    leave the others idle at the end), each between CHUNK_BUNDLES and `largest` long."""
    size = max(1, min(largest, max(CHUNK_BUNDLES, len(tasks) // (workers * per_worker))))
    if len(tasks) < size * workers:  # a small store: still spread it over every worker
        size = max(1, -(-len(tasks) // workers))
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def check_chunk(reader: ObjectReader, trust: Trust,
                chunk: list[BundleTask]) -> list[BundleOutcome]:
    """`check_bundle` over one chunk (what a worker, process or Dask, runs), the cyclic
    GC paused: the chunk's outcomes pile up, acyclic, until they are sent back."""
    with gc_paused():
        return [check_bundle(reader, name, kinds, trust) for name, kinds in chunk]


def _init(reader: ObjectReader, trust: Trust) -> None:
    global _worker
    _worker = (reader, trust)


def _run(chunk: list[BundleTask]) -> list[BundleOutcome]:
    assert _worker is not None, "worker not initialised"
    return check_chunk(*_worker, chunk)


def processes(workers: int, min_bundles: int = 0, start_method: str = "forkserver") -> Mapper:
    """Run the checks on `workers` processes (forkserver: safe under threads); with
    fewer than `min_bundles` bundles, in this process (starting workers costs more).
    `start_method` "fork" makes the workers this process's children (a benchmark
    counts their CPU time)."""

    def run(reader: ObjectReader, trust: Trust,
            tasks: list[BundleTask]) -> Iterator[BundleOutcome]:
        if len(tasks) < max(1, min_bundles):
            yield from in_process(reader, trust, tasks)
            return
        context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":  # workers forked with the checks imported:
            context.set_forkserver_preload([__name__])  # ~0.25 s less to start two
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=_init, initargs=(reader, trust)) as pool:
            # Two chunks in hand per worker: busy, yet bounded memory.
            for outcomes in in_order(lambda chunk: pool.submit(_run, chunk),
                                     chunks(tasks, workers), 2 * workers):
                yield from outcomes

    return run
