"""Work handed to a pool a bounded number ahead, its results taken in the order it was
handed out: what verify's threads and processes, the Dask mapper and pull's downloads
share. Whatever the pool (threads, processes, a Dask client), at most `ahead` items are
in hand, so memory stays bounded and results keep their input order; work not yet
taken is cancelled when the consumer stops early.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result", covariant=True)


class Pending(Protocol[Result]):
    """A submitted piece of work: `concurrent.futures.Future` or a Dask future."""

    def result(self) -> Result: ...

    def cancel(self) -> bool: ...


_END = object()


def in_order(submit: Callable[[Item], Pending[Result]], items: Iterable[Item],
             ahead: int) -> Iterator[Result]:
    """`submit` each item, at most `ahead` in hand; yield their results in item order."""
    pending: deque[Pending[Result]] = deque()
    upcoming = iter(items)
    try:
        while True:
            while len(pending) < ahead:
                following = next(upcoming, _END)
                if following is _END:
                    break
                pending.append(submit(following))  # type: ignore[arg-type]
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
