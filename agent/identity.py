"""Who this host is: the `host_id` that names its objects, and its description."""

from __future__ import annotations

import hashlib
import platform
import re
import socket
from pathlib import Path

from collector import host as host_collector
from collector.registry import CollectContext
from signing.predicate import Host

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def machine_id_sha256(root: Path = Path("/")) -> str | None:
    """SHA-256 of /etc/machine-id (never the id itself), or None where absent."""
    return host_collector.machine_id_sha256(CollectContext(root=root), [])


def auto_host_id() -> str:
    """hostname + "-" + 8 hex of the machine-id hash: stable, readable, unique enough."""
    name = _UNSAFE.sub("-", socket.gethostname().split(".")[0]).strip("-.") or "host"
    digest = machine_id_sha256() or hashlib.sha256(socket.gethostname().encode()).hexdigest()
    return f"{name[:55]}-{digest[:8]}"


def resolve_host_id(configured: str) -> str:
    return auto_host_id() if configured == "auto" else configured


def host_description(host_id: str) -> Host:
    """The manifest's `predicate.host`."""
    return Host(host_id, socket.gethostname(), machine_id_sha256(), platform.system(),
                platform.release(), platform.machine())
