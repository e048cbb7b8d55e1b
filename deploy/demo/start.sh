#!/usr/bin/env bash
# Starts the demo: slapd with the demo directory, the demo pool, and the broker at
# http://127.0.0.1:8000 in the background. Idempotent: what runs is kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
export VDI_CONFIG=${VDI_CONFIG:-deploy/demo/vdi.toml}
state=var/demo
mkdir -p "$state"
vdi=.venv/bin/vdi
deploy/ldap/start-slapd.sh "$state/ldap" 3890 deploy/ldap/demo.ldif
$vdi migrate
$vdi image-import demo var/guest/bios.qcow2
$vdi pool-set window --name "东街/西街街道办窗口桌面 (Street office window desktop)" \
  --image demo --kind floating --min-ready 2 --max-size 6 --memory-mib 256 \
  --group "cn=window-staff,ou=groups,dc=district,dc=example" >/dev/null
$vdi pool-set records --name "西街档案室专用桌面 (Records room, personal desktop)" \
  --image demo --kind dedicated --min-ready 1 --max-size 3 --memory-mib 256 \
  --group "cn=xijie-window,ou=groups,dc=district,dc=example" >/dev/null
if [[ -f $state/broker.pid ]] && kill -0 "$(cat "$state/broker.pid")" 2>/dev/null; then
  echo "demo: the broker is already running (pid $(cat "$state/broker.pid"))"
else
  nohup $vdi serve >"$state/broker.log" 2>&1 &
  echo $! >"$state/broker.pid"
  for _ in $(seq 1 100); do
    if curl -fsS http://127.0.0.1:8000/healthz >/dev/null 2>&1; then break; fi
    if ! kill -0 "$(cat "$state/broker.pid")" 2>/dev/null; then
      echo "demo: the broker stopped; its log:" >&2
      tail -n 30 "$state/broker.log" >&2
      exit 1
    fi
    sleep 0.2
  done
fi
curl -fsS http://127.0.0.1:8000/healthz >/dev/null || { echo "demo: broker not answering; see $state/broker.log" >&2; exit 1; }
cat <<'TXT'

  Broker: http://127.0.0.1:8000   (log: var/demo/broker.log; stop: make demo-stop)

  Demo accounts (password for all: demo2026)
    zhangsan  张三  东街街道办窗口  window clerk  -> desktop pool "window"
    sunqi     孙七  东街街道办窗口  window clerk
    lisi      李四  西街街道办窗口  window clerk   -> also "records" (dedicated: keeps its disk)
    wangwu    王五  helpdesk                     -> /helpdesk
    zhaoliu   赵六  system administrator         -> /admin (group it-ops -> vdi-admins, nested)
    wujiu     吴九  security administrator       -> /security
    zhengshi  郑十  audit administrator          -> /audit
    fengyi    冯一  two administrator roles: refused (三员分立)
    zhouba    周八  in no group: is refused

TXT
