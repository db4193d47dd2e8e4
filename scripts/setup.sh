#!/usr/bin/env bash
# Installs what Ferry needs on a Debian 12 (bookworm) host, as root. Idempotent.
#
# QEMU must come from bookworm-backports (QEMU 10): Debian 12's own QEMU 7.2 loses dirty
# pages under TCG at high guest write rates, so a "completed" migration can leave corrupt
# guest memory. The backports suite is added with the same mirror the machine already uses
# for its main Debian suite; no mirror host is written here.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (it installs Debian packages)" >&2
  exit 1
fi

# Find the URI and keyring the machine uses for its main bookworm suite.
main_uri=""
keyring=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  # deb822: take the stanza whose Suites contains plain "bookworm".
  read -r main_uri keyring < <(awk '
    BEGIN { RS=""; FS="\n" }
    {
      uri=""; suites=""; key="";
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^URIs:/)      { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uri = u[1] }
        if ($i ~ /^Suites:/)    { suites = " " $i " " }
        if ($i ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", $i); key = $i }
      }
      if (suites ~ /[ \t]bookworm[ \t]/ && uri != "") { print uri, (key == "" ? "-" : key); exit }
    }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$main_uri" ] && [ -f /etc/apt/sources.list ]; then
  main_uri=$(awk '$1 == "deb" && $0 !~ /security/ {
      for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|cdrom):/) { uri = $i; if ($(i+1) == "bookworm") { print uri; exit } }
    }' /etc/apt/sources.list)
  keyring="-"
fi
if [ -z "$main_uri" ]; then
  echo "setup: cannot find the machine's Debian bookworm source (looked in /etc/apt/sources.list.d/debian.sources and /etc/apt/sources.list)" >&2
  exit 1
fi

bpo=/etc/apt/sources.list.d/ferry-bookworm-backports.sources
want="Types: deb
URIs: ${main_uri}
Suites: bookworm-backports
Components: main"
if [ -n "$keyring" ] && [ "$keyring" != "-" ]; then
  want="${want}
Signed-By: ${keyring}"
fi
if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ \
   || [ -f "$bpo" ]; then
  if [ ! -f "$bpo" ] || [ "$(cat "$bpo")" != "$want" ]; then
    log "adding bookworm-backports from ${main_uri}"
    printf '%s\n' "$want" > "$bpo"
  fi
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
apt-get update -qq

log "installing QEMU 10 from bookworm-backports"
apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
log "installing guest kit and lab tools"
apt-get install -y -qq busybox-static xz-utils zstd iproute2 procps libc6-dev >/dev/null

ver=$(qemu-system-x86_64 --version | head -n 1)
major=$(printf '%s\n' "$ver" | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ -z "$major" ] || [ "$major" -lt 8 ]; then
  echo "setup: installed QEMU is too old ($ver); Ferry needs QEMU >= 8 (10 from bookworm-backports)" >&2
  exit 1
fi
log "ready: $ver"
