#!/usr/bin/env bash
# make demo: sidekey end to end on a real single-node cluster on this machine, narrated.
#
# Starts etcd, kube-apiserver, containerd, a kubelet and Vault (test/cluster), builds the images
# (hack/images) and installs the Helm chart, then walks through injection, rotation, the probe
# (audit, then enforce) and the detector gate. Each step says what it proves; the script exits
# non-zero as soon as one does not. Everything it started is stopped and removed at the end,
# also on failure or Ctrl-C. Needs root (containerd, mounts, network namespaces).
#
# The first run installs Debian packages (hack/deps.sh) and builds the test servers from the
# Go module proxy (hack/testbin.sh: kube-apiserver and kubelet, Vault, helm); later runs reuse
# them and take about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root (it runs containerd, a kubelet and pods on this machine); try: sudo make demo" >&2
  exit 1
fi

start=$SECONDS
need=()
for tool in k8s vault helm; do
  [ -d "$(hack/testbin.sh --dir "$tool")" ] || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "demo: first run: building ${need[*]} from source, cached for later runs."
  echo "      Expect about 5-10 minutes for k8s (kube-apiserver, kubelet), 9-15 for vault, 3 for helm on 2 cores."
  hack/deps.sh
  hack/testbin.sh "${need[@]}" >/dev/null
  echo "demo: built ${need[*]} in $((SECONDS - start))s"
else
  hack/deps.sh
fi

# The Go test cleans up after itself; this is the net under it (a killed go test).
trap 'hack/cluster-clean.sh >/dev/null 2>&1 || true' EXIT

echo "demo: compiling the walkthrough (test/demo; the first time takes a minute or two)"
set +e
SIDEKEY_DEMO=1 go test -count=1 -timeout 20m -run '^TestDemo$' -v ./test/demo 2>&1 |
  grep -v -E '^(=== RUN|=== PAUSE|=== CONT|PASS$|ok  |FAIL$|--- PASS)' |
  sed -E 's/^    [a-z_]+\.go:[0-9]+: /    /'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "demo: FAILED (exit $rc) after $((SECONDS - start))s; logs of the servers are printed above" >&2
  exit "$rc"
fi
echo "demo: done in $((SECONDS - start))s"
