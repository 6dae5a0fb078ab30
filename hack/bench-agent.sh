#!/usr/bin/env bash
# Measures sidekey-agent beside Vault Agent (`vault agent`, same Vault build) doing the same job
# in the same run, against a local Vault dev server:
#   1. stripped static binary size;
#   2. process start -> all files written (init mode: `sidekey-agent --once` vs
#      `vault agent -exit-after-auth`), median of RUNS runs;
#   3. resident memory (VmRSS) of the long-running sidecar after 10 refresh cycles (1 s
#      refresh / static_secret_render_interval).
# Prints a table with the ratio sidekey/vault for each. Needs root (mounts a tmpfs) and the
# cached Vault build (hack/testbin.sh vault).
#
#   hack/bench-agent.sh            # SECRETS=5 RUNS=15
set -euo pipefail
cd "$(dirname "$0")/.."
SECRETS=${SECRETS:-5}
RUNS=${RUNS:-15}
VAULT=${VAULT:-$(bash hack/testbin.sh --dir vault)/vault}
[ -x "$VAULT" ] || { echo "bench-agent: no vault binary at $VAULT: run hack/testbin.sh vault" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-agent.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT" "$WORK/bin"
mount -t tmpfs -o size=16m tmpfs "$MNT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount "$MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }

# --- build ---
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WORK/bin/sidekey-agent" ./cmd/sidekey-agent
AGENT=$WORK/bin/sidekey-agent
size_sk=$(stat -c %s "$AGENT")
size_vault=$(stat -c %s "$VAULT")

# --- Vault dev server with $SECRETS KV v2 secrets ---
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export VAULT_ADDR=http://127.0.0.1:$PORT
HOME=$WORK "$VAULT" server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$PORT >"$WORK/vault.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "$VAULT_ADDR/v1/sys/health" >/dev/null && break; sleep 0.1; done
for i in $(seq "$SECRETS"); do
  curl -sf -H "X-Vault-Token: root" -X POST "$VAULT_ADDR/v1/secret/data/app$i" \
    -d "{\"data\":{\"username\":\"user$i\",\"password\":\"pw-$i-$RANDOM\"}}" >/dev/null
done
echo -n root >"$WORK/token"

# --- the same job for both: each secret's password into its own 0400 file ---
secrets_json=""
vault_templates=""
for i in $(seq "$SECRETS"); do
  secrets_json+="${secrets_json:+,}{\"name\":\"app$i\",\"file\":\"sk/app$i\",\"mode\":\"0400\",\"source\":{\"backend\":\"vault\",\"path\":\"secret/app$i\",\"key\":\"password\"}}"
  vault_templates+="template {
  contents    = \"{{ with secret \\\"secret/data/app$i\\\" }}{{ .Data.data.password }}{{ end }}\"
  destination = \"$MNT/va/app$i\"
  perms       = \"0400\"
}
"
done
spec() { # $1 mode, $2 refresh
  echo "{\"version\":1,\"mountPath\":\"$MNT\",\"mode\":\"$1\",\"refresh\":\"$2\",\"vault\":{\"addr\":\"$VAULT_ADDR\"},\"secrets\":[$secrets_json]}"
}
cat >"$WORK/agent.hcl" <<EOF
vault { address = "$VAULT_ADDR" }
auto_auth {
  method {
    type   = "token_file"
    config = { token_file_path = "$WORK/token" }
  }
}
template_config {
  static_secret_render_interval = "1s"
  exit_on_retry_failure         = true
}
$vault_templates
EOF

all_written() { # $1 dir
  for i in $(seq "$SECRETS"); do [ -s "$1/app$i" ] || return 1; done
}

# --- 2. start -> all files written, init mode ---
sk_times=() va_times=()
for r in $(seq "$RUNS"); do
  rm -rf "$MNT/sk" "$MNT/va"
  t0=$(now_ms)
  SIDEKEY_SPEC_JSON=$(spec init-only 1m) VAULT_TOKEN=root "$AGENT" --once --log-level error
  t1=$(now_ms)
  all_written "$MNT/sk" || { echo "bench-agent: sidekey-agent did not write every file" >&2; exit 1; }
  sk_times+=($((t1 - t0)))

  t0=$(now_ms)
  "$VAULT" agent -config="$WORK/agent.hcl" -exit-after-auth -log-level=error >"$WORK/vault-agent-once.log" 2>&1
  t1=$(now_ms)
  all_written "$MNT/va" || { echo "bench-agent: vault agent did not write every file" >&2; cat "$WORK/vault-agent-once.log" >&2; exit 1; }
  va_times+=($((t1 - t0)))
done
start_sk=$(printf '%s\n' "${sk_times[@]}" | median)
start_va=$(printf '%s\n' "${va_times[@]}" | median)

# --- 3. RSS of the sidecar after 10 refresh cycles (1 s each) ---
rm -rf "$MNT/sk" "$MNT/va"
HEALTH=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SIDEKEY_SPEC_JSON=$(spec sidecar 1s) VAULT_TOKEN=root "$AGENT" --health-addr "$HEALTH" --log-level warn >"$WORK/sk-sidecar.log" 2>&1 &
sk_pid=$!; PIDS+=($sk_pid)
"$VAULT" agent -config="$WORK/agent.hcl" -log-level=warn >"$WORK/va-sidecar.log" 2>&1 &
va_pid=$!; PIDS+=($va_pid)
sleep 11.5
rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
rss_sk=$(rss $sk_pid)
rss_va=$(rss $va_pid)
split() { awk '/^RssAnon|^RssFile/{printf "%s %s kB  ", $1, $2}' "/proc/$1/status"; }
split_sk=$(split $sk_pid)
split_va=$(split $va_pid)
renders=$(curl -sf "http://$HEALTH/metrics" | awk '/^sidekey_agent_last_success/{n++} END{print n+0}')

kib_mib() { awk -v k="$1" 'BEGIN{printf "%.1f MiB", k/1024}'; }
printf '\nsidekey-agent vs vault agent (%s, %d secrets, %d runs, %s)\n' "$("$VAULT" version | head -1 | cut -d, -f1)" "$SECRETS" "$RUNS" "$(date -u +%FT%TZ)"
printf '%-44s %14s %14s %8s\n' "measure" "sidekey-agent" "vault agent" "ratio"
printf '%-44s %14s %14s %8s\n' "stripped static binary" "$(awk -v b=$size_sk 'BEGIN{printf "%.1f MB", b/1e6}')" "$(awk -v b=$size_vault 'BEGIN{printf "%.1f MB", b/1e6}')" "$(ratio $size_sk $size_vault)"
printf '%-44s %14s %14s %8s\n' "start -> all files written (median)" "${start_sk} ms" "${start_va} ms" "$(ratio $start_sk $start_va)"
printf '%-44s %14s %14s %8s\n' "sidecar RSS after 10 refresh cycles (1 s)" "$(kib_mib $rss_sk)" "$(kib_mib $rss_va)" "$(ratio $rss_sk $rss_va)"
printf '  sidekey-agent %s\n  vault agent   %s\n' "$split_sk" "$split_va"
printf 'goals: binary <= 20 MB, start <= 100 ms, RSS <= 16 MiB; sidekey-agent secrets tracked: %s\n' "$renders"
