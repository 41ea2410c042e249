#!/bin/sh
# gamsa offline install for hosts without dpkg (docs/OPERATIONS.md, "Install").
# Run as root from the unpacked tarball: ./install.sh. Idempotent: a second run is an
# upgrade that keeps the key, the chain and /etc/gamsa/agent.toml.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "install.sh: error: run as root" >&2; exit 2; }
old=""
[ -x /opt/gamsa/bin/gamsa ] && old=$(/opt/gamsa/bin/gamsa --version 2>/dev/null | sed 's/.*version //') || true
[ -x /opt/gamsa/bin/gamsa ] && [ -z "$old" ] && old=unknown

install -d -m 0755 /opt/gamsa /opt/gamsa/share
rm -rf /opt/gamsa/wheelhouse.next
cp -R "$here/wheelhouse" /opt/gamsa/wheelhouse.next
rm -rf /opt/gamsa/wheelhouse
mv /opt/gamsa/wheelhouse.next /opt/gamsa/wheelhouse
install -m 0755 "$here/gamsa-setup" /opt/gamsa/share/gamsa-setup
install -m 0644 "$here/agent.toml" /opt/gamsa/share/agent.toml
install -m 0644 "$here/OPERATIONS.md" /opt/gamsa/share/OPERATIONS.md

# The config is the operator's: installed once, never overwritten (like a conffile);
# a newer default lands beside it as agent.toml.new.
install -d -m 0750 /etc/gamsa
if [ -f /etc/gamsa/agent.toml ]; then
  if ! cmp -s "$here/agent.toml" /etc/gamsa/agent.toml; then
    install -m 0640 "$here/agent.toml" /etc/gamsa/agent.toml.new
    echo "install.sh: kept /etc/gamsa/agent.toml; the new default is /etc/gamsa/agent.toml.new" >&2
  fi
else
  install -m 0640 "$here/agent.toml" /etc/gamsa/agent.toml
fi

if [ -d /etc/systemd/system ]; then
  install -m 0644 "$here/gamsa.service" /etc/systemd/system/gamsa.service
fi
exec /opt/gamsa/share/gamsa-setup "$old"
