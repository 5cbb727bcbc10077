#!/usr/bin/env bash
# Installs Debian's OpenSSH server, which the SSH tests (internal/remote, internal/testhost) start
# as a child process on a loopback port with their own config; the package's own service is
# stopped and disabled where systemd runs it, so nothing listens on port 22 because of this.
# Safe to run again: what is there is kept.
set -euo pipefail
if [ ! -x /usr/sbin/sshd ]; then
  echo "installing Debian's openssh-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
  if command -v systemctl >/dev/null && systemctl is-active --quiet ssh 2>/dev/null; then
    systemctl stop ssh ssh.socket 2>/dev/null || true
    systemctl disable ssh ssh.socket 2>/dev/null || true
  fi
fi
# sshd refuses to start without its privilege-separation directory.
mkdir -p /run/sshd
/usr/sbin/sshd -V 2>&1 | head -1 >&2 || true
