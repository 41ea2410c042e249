"""Run a command with fixture files laid over system directories, for tests.

Usage: unshare --mount --propagation private python mountns_exec.py SPEC -- COMMAND...

SPEC is a JSON list of [directory, upper, work] or [directory, upper, work, lower]:
each directory gets an overlay mount whose upper layer holds the fixture files, so
/etc/passwd, /home, /var/log and /run/utmp read as the test wrote them while the rest
of the system stays as it is. With `lower` (an empty folder), the directory shows the
fixture files only, not the system's. The mounts live only in this private mount
namespace, then COMMAND replaces this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main(argv: list[str]) -> None:
    spec_path, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: mountns_exec.py SPEC -- COMMAND...")
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    for directory, upper, work, *lower in spec:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower[0] if lower else directory},upperdir={upper},"
                        f"workdir={work}", directory], check=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
