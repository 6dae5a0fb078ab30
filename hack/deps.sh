#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, when any is missing:
# clang/llvm/libbpf-dev/bpftool to generate the BPF objects, and containerd/runc/CNI plugins/
# busybox-static for the single-node cluster tests; redis-server as a real leased-credential
# backend (Vault's database engine) in the agent tests; nghttp2-client for h2load, the load
# generator of the webhook benchmark.
set -euo pipefail
pkgs=(clang llvm libbpf-dev bpftool containerd runc containernetworking-plugins busybox-static redis-server nghttp2-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "deps: installing ${missing[*]}" >&2
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
