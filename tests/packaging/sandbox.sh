#!/bin/bash
# Run a command as if on a fresh host, without changing this one: in a private mount
# namespace (run under `unshare --mount --fork`), /etc, /opt, /var/lib, /var/log,
# /usr/lib/systemd/system and /run/systemd are replaced by copies or empty dirs kept
# in SANDBOX, so a later call sees what an earlier one installed.
#   unshare --mount --fork bash sandbox.sh SANDBOX CMD [ARG...]
set -euo pipefail
box=$1; shift
if [ ! -d "$box/etc" ]; then
  mkdir -p "$box"/{opt,varlib,varlog,run-systemd,systemd-system}
  cp -a /etc "$box/etc"
  cp -a /var/lib/dpkg "$box/varlib/dpkg"
  cp -a /usr/lib/systemd/system/. "$box/systemd-system/"
fi
mount --make-rprivate /
mount --bind "$box/etc" /etc
mount --bind "$box/opt" /opt
mount --bind "$box/varlib" /var/lib
mount --bind "$box/varlog" /var/log
mount --bind "$box/systemd-system" /usr/lib/systemd/system
mount --bind "$box/run-systemd" /run/systemd
exec "$@"
