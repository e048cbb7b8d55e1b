#!/usr/bin/env bash
# Stops the demo broker and slapd. Desktops stay defined in libvirt and are reused.
set -uo pipefail
cd "$(dirname "$0")/../.."
state=var/demo
if [[ -f $state/broker.pid ]]; then
  kill "$(cat "$state/broker.pid")" 2>/dev/null && echo "demo: broker stopped"
  rm -f "$state/broker.pid"
fi
deploy/ldap/stop-slapd.sh "$state/ldap" 2>/dev/null || true
