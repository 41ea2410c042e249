"""Reading store objects so that their content cannot exhaust the reader.

A store on disk (a `file://` store, a pulled mirror, `aws s3 sync` of a bucket) is
content the verifier does not control: a "records object" may be a FIFO (an open
that never returns), a symlink to /dev/zero (a read that never ends) or a huge
file. Here only regular files are opened (O_NOFOLLOW|O_NONBLOCK, then fstat), and
objects are read as streams, or whole only up to a stated cap. What is refused
raises `ObjectRefused`, which the verifier reports as a finding about that object.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from signing.errors import FormatError, StoreError

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest is ~2 KB; 4 MiB leaves room for collectors[]
READ_CHUNK = 1 << 20


class ObjectRefused(FormatError):
    """An object that is not read: not a regular file (`code` object_not_regular), or
    over its size cap (`object_too_large`)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[ObjectRefused], tuple[str, str]]:
        return (ObjectRefused, (self.message, self.code))  # crosses to worker processes


class ObjectReader(Protocol):
    """Read access to a store: keys under a prefix, and an object's bytes."""

    def list(self, prefix: str) -> Iterable[str]: ...

    def get(self, key: str) -> bytes: ...


class StreamingReader(ObjectReader, Protocol):
    """A reader that can also hand out an object as a stream (files, S3 bodies)."""

    def open(self, key: str) -> BinaryIO: ...


def open_regular(path: str | os.PathLike[str], key: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file; else `ObjectRefused`.

    O_NOFOLLOW refuses a symlink in the last component, O_NONBLOCK makes opening
    a FIFO return at once (and fstat then refuses it), so neither can hang or
    stream without end.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise ObjectRefused(f"{key}: is a symbolic link, not a regular file; not read",
                                "object_not_regular") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ObjectRefused(f"{key}: is {_kind(mode)}, not a regular file; not read",
                                "object_not_regular")
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a plain file"


def too_large(key: str, limit: int, why: str = "") -> ObjectRefused:
    """The refusal of an object over its cap (`why`: what the cap stands for)."""
    return ObjectRefused(f"{key}: larger than {limit} bytes{why}; not read further",
                         "object_too_large")


def copy_capped(stream: BinaryIO, sink: Callable[[bytes], object], limit: int) -> bool:
    """`stream` into `sink` a chunk at a time, at most `limit` + 1 bytes: True when
    the stream held more than `limit` (then nothing past that byte is read)."""
    size = 0
    while size <= limit:
        chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            return False
        sink(chunk)
        size += len(chunk)
    return True


def read_capped(stream: BinaryIO, key: str, limit: int) -> bytes:
    """All of `stream`, or `ObjectRefused` once it holds more than `limit` bytes."""
    chunks: list[bytes] = []
    if copy_capped(stream, chunks.append, limit):
        raise too_large(key, limit)
    return b"".join(chunks)


def open_object(reader: ObjectReader, key: str) -> BinaryIO:
    """`key` as a stream: the reader's own `open` when it has one, else its bytes."""
    opener = getattr(reader, "open", None)
    if opener is not None:
        stream: BinaryIO = opener(key)
        return stream
    return io.BytesIO(reader.get(key))


def get_capped(reader: ObjectReader, key: str, limit: int) -> bytes:
    """`key`'s bytes, refused (`ObjectRefused`) when over `limit` bytes."""
    with open_object(reader, key) as stream:
        return read_capped(stream, key, limit)


def _unlistable(error: OSError) -> None:
    """os.walk's onerror: a folder that cannot be listed is an error, never a silent
    skip (an auditor without read access to one host's folder must not get a clean
    verify of the others). A folder gone since its parent was listed is skipped."""
    if isinstance(error, FileNotFoundError):
        return
    raise StoreError(f"{error.filename}: cannot list this folder of the store "
                     f"({error.strerror or error})",
                     hint="the reader needs read and search access to every folder of "
                          "the store or mirror") from error


@dataclass(frozen=True)
class DirectoryReader:
    """A store laid out on disk (a file:// store, or `aws s3 sync` of a bucket).

    Picklable (a path), so worker processes can read the same store.
    """

    root: Path

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root
        top = self._folder_of(prefix)
        if top is None:
            return
        for dirpath, dirnames, filenames in os.walk(top, onerror=_unlistable):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    yield key

    def _folder_of(self, prefix: str) -> str | None:
        """The deepest folder `prefix` names ("v1/keys/" -> ROOT/v1/keys), walked
        instead of the whole store: listing a fleet's key folder used to walk every
        bundle of every host. None when that folder is missing or not a plain folder
        (a symlink: the whole walk never followed one either); the root when the
        prefix has a part that is not a plain name ("", ".", ".."). A folder on the
        way this user may not search (a 0700 store root) is an error, not a None."""
        parts = prefix.split("/")[:-1]
        if any(part in ("", ".", "..") for part in parts):
            return os.fspath(self.root)
        folder = os.fspath(self.root)
        for part in parts:
            folder = os.path.join(folder, part)
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    return None
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as error:  # EACCES on the way: the folder above may not be
                # searched (a 0700 store root): name it, never list nothing
                _unlistable(type(error)(error.errno, error.strerror, os.path.dirname(folder)))
        return folder

    def open(self, key: str) -> BinaryIO:
        # os.path.join, not `/`: a pathlib join and its str() were 2 µs of each open
        return open_regular(os.path.join(self.root, key), key)

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()
