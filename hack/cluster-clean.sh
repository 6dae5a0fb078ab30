#!/usr/bin/env bash
# Stops the single-node test cluster of test/cluster and removes what it leaves on the host:
# pod containers and their shims, containerd, the kubelet, kube-apiserver and etcd, the mounts
# under the cluster directory, the pods' network namespaces, the CNI bridge and the pod logs.
#
#   hack/cluster-clean.sh [DIR]     (default: $SIDEKEY_CLUSTER_DIR or /tmp/sidekey-cluster)
#
# test/cluster runs it at the end of every run and before each start (so a crashed run is
# cleaned up by the next one); run it by hand after killing a test. Processes are stopped by the
# pids the cluster recorded (checked against their command line) and by the runc state of the
# cluster's own containerd, never by name.
set -uo pipefail
DIR=${1:-${SIDEKEY_CLUSTER_DIR:-/tmp/sidekey-cluster}}
BRIDGE=${SIDEKEY_CLUSTER_BRIDGE:-sidekey0}
[ -d "$DIR" ] || exit 0
DIR=$(cd "$DIR" && pwd -P)

# stop NAME BINARY-BASENAME: SIGTERM the recorded pid if it still runs that binary, SIGKILL after 10s.
stop() {
  local pidf="$DIR/$1.pid" pid exe
  [ -f "$pidf" ] || return 0
  pid=$(cat "$pidf")
  exe=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | cut -d' ' -f1)
  if [ -n "$exe" ] && [ "$(basename "$exe")" = "$2" ]; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidf"
}

# The kubelet first, so it does not restart what is being removed.
stop kubelet kubelet

# Every container of the cluster's containerd, through runc's state (it survives containerd).
RUNC_ROOT="$DIR/runc/k8s.io"
if [ -d "$RUNC_ROOT" ]; then
  for id in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do
    runc --root "$RUNC_ROOT" kill "$id" KILL 2>/dev/null
  done
  sleep 0.5
  for id in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do
    runc --root "$RUNC_ROOT" delete --force "$id" 2>/dev/null
  done
fi

stop containerd containerd

# Shims of this containerd (their command line names its socket).
SOCK="$DIR/containerd/containerd.sock"
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline") || continue
  case $cmd in
    *containerd-shim*"-address $SOCK"*) kill -KILL "${p#/proc/}" 2>/dev/null ;;
  esac
done

stop kube-apiserver kube-apiserver
stop etcd etcd

# Mounts under the cluster directory (pod volumes, rootfs, sandbox shm), deepest first.
awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done

# The pods' network namespaces: CRI names them cni-<uuid>; delete those no process uses.
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do
  [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && ip netns delete "$ns" 2>/dev/null
done
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"

# Pod logs of the cluster's namespaces (the kubelet writes them under /var/log/pods).
if [ -f "$DIR/namespaces" ]; then
  while read -r ns; do
    [ -n "$ns" ] && rm -rf /var/log/pods/"${ns}"_*
  done < "$DIR/namespaces"
fi

# Empty pod cgroups the kubelet made (cgroupfs driver); rmdir only removes empty ones.
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
done

rm -rf --one-file-system "$DIR"
exit 0
