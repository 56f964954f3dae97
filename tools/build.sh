#!/usr/bin/env bash
# Builds the test bed's tools into bin/ from the pinned modules under tools/.
#
# Each tool set is its own Go module (tools/SET/go.mod + go.sum), so that
# k8s.io/kubernetes, etcd, kwok and Kratos never enter Gatehouse's own go.mod.
# Those files are the pin: a set is rebuilt only when the hash of its go.mod,
# go.sum and build flags changes. Built binaries are also kept in a cache
# outside the work tree (GATEHOUSE_TOOLS_CACHE, default ~/.cache/gatehouse-tools)
# keyed by that hash, so a fresh clone on the same machine does not rebuild.
#
# Usage: tools/build.sh [SET ...]   (default: every set)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
cache="${GATEHOUSE_TOOLS_CACHE:-$HOME/.cache/gatehouse-tools}"
mkdir -p "$bin" "$cache"

kube_version=v1.37.2
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=37"
done

# Extra files a set installs beside its binaries, made by after_SET.
declare -A extras=([kwok]="kwok-stages.yaml")

# kwok runs nothing without stages. Install the default ones kwokctl uses
# (fast node start, lease heartbeat, fast pod lifecycle) from the very module
# version the binary was built from.
after_kwok() {
  local mod
  mod=$(cd "$root/tools/kwok" && go list -mod=mod -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  local s=$mod/kustomize/stage
  local out="$bin/kwok-stages.yaml"
  : >"$out.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    { echo "---"; cat "$s/$f"; } >>"$out.tmp"
  done
  mv "$out.tmp" "$out"
}

# set -> "binaries|packages|build flags"
declare -A sets=(
  [kube]="kube-apiserver kube-controller-manager kube-scheduler kubectl|k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl|-ldflags=$kube_ldflags"
  [etcd]="etcd|go.etcd.io/etcd/server/v3|-ldflags=-s -w"
  [kwok]="kwok|sigs.k8s.io/kwok/cmd/kwok|-ldflags=-s -w"
  [kratos]="kratos|github.com/ory/kratos|-tags=sqlite -ldflags=-s -w"
)

build_set() {
  local set=$1 spec=${sets[$1]}
  local names=${spec%%|*} rest=${spec#*|}
  local pkgs=${rest%%|*} flags=${rest#*|}
  local dir="$root/tools/$set"
  local hash
  hash=$( (cat "$dir/go.mod" "$dir/go.sum"; echo "$flags ${extras[$set]:-}"; go env GOVERSION GOOS GOARCH) | sha256sum | cut -c1-16)
  local stamp="$bin/.stamp-$set"
  if [[ -f $stamp && $(cat "$stamp") == "$hash" ]]; then
    local ok=1
    for n in $names ${extras[$set]:-}; do [[ -f $bin/$n ]] || ok=0; done
    if ((ok)); then echo "tools: $set up to date ($hash)"; return; fi
  fi
  local cached="$cache/$set-$hash"
  if [[ -f $cached/.complete ]]; then
    echo "tools: $set from cache $cached"
    for n in $names ${extras[$set]:-}; do cp -f "$cached/$n" "$bin/$n"; done
    echo "$hash" >"$stamp"
    return
  fi
  echo "tools: building $set ($names) ..."
  local start=$SECONDS
  local -a fl=()
  # flags are "-tags=x -ldflags=..." where -ldflags runs to the end of the string
  if [[ $flags == -tags=* ]]; then fl+=("${flags%% -ldflags=*}"); flags=${flags#* }; fi
  fl+=("$flags")
  # One package: name the output (etcd's package path ends in /v3).
  local out="$bin/"
  [[ $names == *" "* ]] || out="$bin/$names"
  (cd "$dir" && go build -mod=mod -trimpath "${fl[@]}" -o "$out" $pkgs)
  if declare -F "after_$set" >/dev/null; then "after_$set"; fi
  echo "tools: built $set in $((SECONDS - start))s"
  mkdir -p "$cached.tmp"
  for n in $names ${extras[$set]:-}; do cp -f "$bin/$n" "$cached.tmp/$n"; done
  touch "$cached.tmp/.complete"
  rm -rf "$cached" && mv "$cached.tmp" "$cached"
  # Older pins of this set are no longer wanted.
  for old in "$cache/$set-"*; do [[ $old == "$cached" ]] || rm -rf "$old"; done
  echo "$hash" >"$stamp"
}

want=("$@")
((${#want[@]})) || want=(etcd kwok kube kratos)
total=$SECONDS
for s in "${want[@]}"; do
  [[ -n ${sets[$s]:-} ]] || { echo "tools: unknown set $s (have: ${!sets[*]})" >&2; exit 2; }
  build_set "$s"
done
echo "tools: done in $((SECONDS - total))s"
