"""Prototype, not product: how fast could sealing be with a second process?

Run by hand (not in CI):  python bench/bench_seal_two_process.py [--records 1000000]

Issue 2 asks for sealing at no less than 1/3 of the raw leaf-hash rate. One CPython
process cannot get there (docs/BENCHMARKS.md has the per-record costs), so this
measures the most promising split on two cores before anyone builds it: the main
process canonicalizes and domain-checks each 4096-record batch exactly as
`write_records` does and streams the lines down a pipe; a worker process splits
them, hashes leaves and inner nodes, and gzips. It prints, in the same run, the
limit (leaf hashes alone), today's `write_records`, the two-process prototype, and
each side alone, so the ceiling of the design is visible. The Merkle root of the
prototype is checked against `write_records` on every run.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from bench_seal import synthetic_records

from signing import canonical
from signing.bundle import BATCH_RECORDS, GZIP_LEVEL, write_records

# The worker: stdlib only, fed frames of (op, length, payload) on stdin.
WORKER = f"""
import hashlib, struct, sys, zlib
inp, out, sha = sys.stdin.buffer, sys.stdout.buffer, hashlib.sha256
while True:
    head = inp.read(5)
    if not head:
        break
    op, n = head[:1], struct.unpack(">I", head[1:])[0]
    if op == b"S":
        comp, chunks, stack, size = zlib.compressobj({GZIP_LEVEL}, zlib.DEFLATED, 31), [], [], 0
    elif op == b"B":
        blob = inp.read(n)
        chunks.append(comp.compress(blob))
        lines = blob.split(b"\\n")
        lines.pop()
        level = [sha(b"\\x00" + line).digest() for line in lines]
        pos = 0
        while pos < len(level):  # perfect subtrees, largest first (batches are aligned)
            run = 1 << ((len(level) - pos).bit_length() - 1)
            nodes = level[pos:pos + run]
            while len(nodes) > 1:
                nodes = [sha(b"\\x01" + a + b).digest() for a, b in zip(nodes[0::2], nodes[1::2])]
            node, height = nodes[0], run.bit_length() - 1
            size += run
            carry = size >> height
            while not carry & 1:
                node = sha(b"\\x01" + stack.pop() + node).digest()
                carry >>= 1
            stack.append(node)
            pos += run
    elif op == b"F":
        chunks.append(comp.flush())
        data = b"".join(chunks)
        node = stack[-1] if stack else sha(b"").digest()
        for left in reversed(stack[:-1]):
            node = sha(b"\\x01" + left + node).digest()
        out.write(struct.pack(">QI", size, len(data)) + node + data)
        out.flush()
"""


def frames(blob: bytes) -> bytes:
    return b"B" + struct.pack(">I", len(blob)) + blob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-gzip", action="store_true",
                        help="worker skips compression: the ceiling of the hashing split alone")
    args = parser.parse_args()
    source = (WORKER.replace("chunks.append(comp.compress(blob))", "pass")
              if args.no_gzip else WORKER)
    n = args.records
    records = synthetic_records(n)
    encoder, domain = canonical._ENCODER, canonical._BATCH_TYPE
    assert encoder is not None and domain is not None, "needs msgspec"
    lines = [canonical.canonical_bytes(r) for r in records]
    worker = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    assert worker.stdin is not None and worker.stdout is not None
    send, receive = worker.stdin.write, worker.stdout.read

    def encode_and_check(batch: list[Any]) -> bytes:
        blob = encoder.encode_lines(batch)
        if msgspec.convert({"items": batch}, domain, strict=True).items != batch:
            raise SystemExit("synthetic records left the domain")
        return blob

    def two_process() -> tuple[int, bytes, bytes]:
        send(b"S\0\0\0\0")
        with canonical.gc_paused():
            for i in range(0, n, BATCH_RECORDS):
                send(frames(encode_and_check(records[i:i + BATCH_RECORDS])))
        send(b"F\0\0\0\0")
        worker.stdin.flush()  # type: ignore[union-attr]
        size, length = struct.unpack(">QI", receive(12))
        return size, receive(32), receive(length)

    def main_side_alone() -> None:
        with canonical.gc_paused():
            for i in range(0, n, BATCH_RECORDS):
                encode_and_check(records[i:i + BATCH_RECORDS])

    def limit() -> None:
        sha = hashlib.sha256
        for line in lines:
            sha(b"\x00" + line).digest()

    def timed(fn: Any) -> tuple[float, Any]:
        gc.collect()
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result

    two_process()  # start-up and imports of the worker are not what we measure
    print(f"# {n:,} records, {sys.version.split()[0]}, rates in records/s, "
          f"ratio = rate / limit, worker gzip {'off' if args.no_gzip else 'on'}")
    print("| run | limit | write_records | ratio | two processes | ratio "
          "| main side alone | worker side alone |")
    print("|---|---|---|---|---|---|---|---|")
    stream = b"S\0\0\0\0" + b"".join(
        frames(encoder.encode_lines(records[i:i + BATCH_RECORDS]))
        for i in range(0, n, BATCH_RECORDS)) + b"F\0\0\0\0"
    for run in range(1, args.runs + 1):
        t_limit, _ = timed(limit)
        t_now, obj = timed(lambda: write_records(records))
        t_two, (size, root, _data) = timed(two_process)
        assert size == n and root.hex() == obj.merkle_root, "prototype root differs"
        t_main, _ = timed(main_side_alone)
        t_worker, _ = timed(lambda: subprocess.run(
            [sys.executable, "-c", source], input=stream, capture_output=True, check=True))
        print(f"| {run} | {n / t_limit:,.0f} | {n / t_now:,.0f} | {t_limit / t_now:.2f} "
              f"| {n / t_two:,.0f} | {t_limit / t_two:.2f} | {n / t_main:,.0f} "
              f"| {n / t_worker:,.0f} |", flush=True)
    worker.stdin.close()  # type: ignore[union-attr]
    worker.wait()


if __name__ == "__main__":
    main()
