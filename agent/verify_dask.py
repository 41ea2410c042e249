"""`gamsa verify --dask tcp://SCHEDULER:8786`: the per-bundle checks on a Dask
distributed cluster, the chain and fleet reduce here (signing.verify).

`dask.distributed` (the `audit` extra) is imported only when --dask is given. The
workers run `signing.fanout.check_chunk`, so they need gamsa installed and the
store at the same path (a mirror on a shared filesystem); the reader and the trust
are scattered once to every worker, chunks are submitted a few per worker ahead,
and outcomes are taken in the tasks' order, so the findings are those one process
gives, in the same order. A worker's first chunk sets its malloc thresholds for
throughput (agent/memory.py `for_batch_work`: Dask's nanny sets them for footprint,
which costs verifying 1.45x the CPU).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

from agent import memory
from signing.errors import StoreError, UsageError
from signing.fanout import check_chunk, chunks
from signing.ordered import in_order
from signing.verify import BundleOutcome, BundleTask, Mapper, ObjectReader, Trust

CONNECT_TIMEOUT_S = 10
# A Dask task costs the scheduler, the client and the worker far more than a pool's
# (~10 ms of CPU in all): fewer, larger chunks than signing.fanout's (20,000 bundles
# on 2 workers: 0.5 s less CPU in this process, 1.0 s less in the workers).
DASK_CHUNKS_PER_WORKER = 4
DASK_MAX_CHUNK_BUNDLES = 4096


def _client(address: str) -> Any:
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise UsageError("--dask needs dask.distributed",
                         hint="pip install 'gamsa[audit]'") from exc
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S,  # type: ignore[no-untyped-call]
                      set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise StoreError(f"--dask {address}: cannot reach the scheduler ({exc})",
                         hint="check the address and that dask-scheduler is running") from exc


def check_chunk_on_worker(reader: ObjectReader, trust: Trust, chunk: bytes) -> bytes:
    """`check_chunk` on a Dask worker, its malloc tuned for throughput first (once).

    The chunk comes and the outcomes go as one pickled blob each: Dask serializes a
    list it is handed element by element (a pickle call, and a copy of every class
    path, per item: 20,000 outcomes cost the client 0.25 s of CPU to load, and the
    chunks' task lists were pickled by the client and unpickled and re-pickled by
    the scheduler), but passes bytes through untouched."""
    memory.for_batch_work()
    tasks: list[BundleTask] = pickle.loads(chunk)  # noqa: S301 - from our own client
    return pickle.dumps(check_chunk(reader, trust, tasks), protocol=pickle.HIGHEST_PROTOCOL)


def dask_mapper(address: str) -> Mapper:
    """A `Mapper` that runs check_bundle in chunks on the cluster at `address`."""

    def run(reader: ObjectReader, trust: Trust,
            tasks: list[BundleTask]) -> Iterator[BundleOutcome]:
        if not tasks:
            return
        client = _client(address)
        try:
            workers = max(1, sum(int(w.get("nthreads", 1)) for w in
                                 client.scheduler_info()["workers"].values()))
            shared = client.scatter([reader, trust], broadcast=True)

            def submit(chunk: list[BundleTask]) -> Any:
                return client.submit(check_chunk_on_worker, shared[0], shared[1],
                                     pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL),
                                     pure=False)

            for blob in in_order(submit, chunks(tasks, workers, DASK_CHUNKS_PER_WORKER,
                                                    DASK_MAX_CHUNK_BUNDLES), 2 * workers):
                # From our own workers, as Dask's own results are: the cluster is
                # trusted as this process is (docs/DESIGN.md).
                outcomes: list[BundleOutcome] = pickle.loads(blob)  # noqa: S301
                yield from outcomes
        finally:
            client.close()

    return run
