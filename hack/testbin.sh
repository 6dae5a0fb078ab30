#!/usr/bin/env bash
# Builds the real servers the tests run against, from the Go module proxy, and caches them.
#
#   hack/testbin.sh [k8s|vault|helm|gitleaks|all]...   (default: k8s vault helm)
#   hack/testbin.sh --dir NAME                          print the cache dir of NAME, build nothing
#
# Each tool lands in $SIDEKEY_TESTBIN/<name>-<version>/ (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/sidekey/testbin) and is built only when that directory is
# missing. Builds run one at a time (they need up to 4.7 GB of memory at link) under a lock,
# into a temporary directory that is renamed into place only when complete, so an interrupted
# build is never mistaken for a cached one. The last line printed for each tool is its directory.
set -euo pipefail

K8S_VERSION=v1.37.2
VAULT_VERSION=v1.21.4
HELM_VERSION=v3.22.0
GITLEAKS_VERSION=v8.30.1

CACHE=${SIDEKEY_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/sidekey/testbin}
export PATH=$PATH:/usr/local/go/bin
export CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf 'testbin: %s\n' "$*" >&2; }

dir_of() {
  case $1 in
    k8s) echo "$CACHE/k8s-$K8S_VERSION" ;;
    vault) echo "$CACHE/vault-$VAULT_VERSION" ;;
    helm) echo "$CACHE/helm-$HELM_VERSION" ;;
    gitleaks) echo "$CACHE/gitleaks-$GITLEAKS_VERSION" ;;
    *) log "unknown tool '$1' (want k8s, vault, helm or gitleaks)"; exit 2 ;;
  esac
}

# k8s: kube-apiserver, etcd, kubectl and kubelet from one wrapper module. k8s.io/kubernetes
# replaces every staging module with ./staging/src/..., which Go ignores in a dependency, so the
# wrapper pins each staging module to its published v0.X.Y tag.
build_k8s() {
  local out=$1 work=$2 minor staging kmod ldf
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  staging=v0.${K8S_VERSION#v1.}
  cd "$work"
  printf 'module local/k8sbins\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n' "$K8S_VERSION" > go.mod
  kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo; echo "replace ("
    for m in $(awk '/=> \.\/staging\/src\//{print $1}' "$kmod"); do
      if grep -qE "^\s+$m v0\.0\.0" "$kmod"; then echo "	$m => $m $staging"; fi
    done
    echo ")"
  } >> go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  go mod tidy >/dev/null
  ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  local name pkg
  for pair in kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver etcd=go.etcd.io/etcd/server/v3 \
              kubectl=k8s.io/kubernetes/cmd/kubectl kubelet=k8s.io/kubernetes/cmd/kubelet; do
    name=${pair%%=*}; pkg=${pair#*=}
    log "building $name $K8S_VERSION"; [ "$name" = kube-apiserver ] && log "(kube-apiserver takes 4-9 minutes)"
    go build -trimpath -ldflags "$ldf" -o "$out/$name" "$pkg"
  done
  "$out/kube-apiserver" --version >&2
}

# vault: vault's go.mod replaces vault/api and vault/sdk with in-tree copies; the in-tree sdk
# matches no published tag, so sdk v0.21.0 is patched (two small API differences) and replaced.
build_vault() {
  local out=$1 work=$2 sdk21 sdk24
  cd "$work"
  cat > go.mod <<MOD
module local/vaultbin

go 1.26.0

require github.com/hashicorp/vault $VAULT_VERSION

// copied from vault's own go.mod (replaces in dependencies are ignored)
replace github.com/99designs/keyring => github.com/Jeffail/keyring v1.2.3

replace github.com/ma314smith/signedxml v1.1.1 => github.com/moov-io/signedxml v1.1.1

replace github.com/hashicorp/vault/sdk => ./sdk-patched
MOD
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/hashicorp/vault"\n' > tools.go
  sdk21=$(go mod download -json github.com/hashicorp/vault/sdk@v0.21.0 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  sdk24=$(go mod download -json github.com/hashicorp/vault/sdk@v0.24.0 | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp -r "$sdk21" sdk-patched; chmod -R u+w sdk-patched
  sed -i 's#ActivationFunc func(context.Context, \*logical.Request, string) error#ActivationFunc func(context.Context, *logical.Request) error#' \
    sdk-patched/framework/backend.go
  cp "$sdk24/helper/keysutil/lock_manager.go" sdk-patched/helper/keysutil/lock_manager.go
  go mod tidy -e >/dev/null 2>&1 || true # -e: a vault test package wants sdk test helpers
  log "building vault $VAULT_VERSION (about 9 minutes, 4.7 GB at link)"
  go build -trimpath -ldflags "-s -w" -o "$out/vault" github.com/hashicorp/vault
  "$out/vault" version >&2
}

build_go_install() { # out pkg@version
  log "building $2"
  GOBIN=$1 go install -trimpath -ldflags "-s -w" "$2"
}

build() {
  local tool=$1 dir work
  dir=$(dir_of "$tool")
  if [ -d "$dir" ]; then echo "$dir"; return; fi
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  if [ ! -d "$dir" ]; then
    work=$(mktemp -d "$CACHE/.build-$tool.XXXXXX")
    mkdir -p "$work/out" "$work/src"
    local start=$SECONDS
    case $tool in
      k8s) (build_k8s "$work/out" "$work/src") ;;
      vault) (build_vault "$work/out" "$work/src") ;;
      helm) (build_go_install "$work/out" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") ;;
      gitleaks) (build_go_install "$work/out" "github.com/zricethezav/gitleaks/v8@$GITLEAKS_VERSION") ;;
    esac
    mv "$work/out" "$dir"
    rm -rf "$work"
    log "built $tool in $((SECONDS - start))s"
  fi
  flock -u 9
  echo "$dir"
}

if [ "${1:-}" = --dir ]; then dir_of "$2"; exit 0; fi
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(k8s vault helm)
[ "${tools[0]}" = all ] && tools=(k8s vault helm gitleaks)
for t in "${tools[@]}"; do build "$t"; done
