#!/usr/bin/env bash
# Builds the pinned tools into a per-machine cache and links them into .tools/bin:
#   controlplane  etcd + kube-apiserver + kube-controller-manager launcher (e2e/controlplane)
#   kubectl       of the same Kubernetes version
#   opa, helm     from their Go modules
#   krew          the kubectl plugin manager (the release test installs kubectl-chaperone with it)
# With the argument `node` it builds what the local node runs instead (e2e/harness/node.ts):
#   kubelet, kube-scheduler, kube-proxy  of the same Kubernetes version, through e2e/controlplane/go.mod
#   coredns       cluster DNS for pods, with the plugins e2e/coredns selects
# A tool already in the cache is linked, never rebuilt. The cache is keyed by version (and, for the
# launcher and the node's programs, by a hash of their module files), so a fresh clone on the same
# machine reuses it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../tools.env
source "$repo/tools.env"
cache=${CHAPERONE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chaperone}
bin="$repo/.tools/bin"
mkdir -p "$cache" "$bin"

command -v go >/dev/null || { echo "tools: 'go' is not on PATH; install Go 1.26 or newer (the tools are built from the Go module proxy)" >&2; exit 1; }

group=${1:-controlplane}
case "$group" in controlplane | node) ;; *) echo "tools: unknown group '$group' (controlplane or node)" >&2; exit 2 ;; esac

cp_dir="$repo/e2e/controlplane"
dns_dir="$repo/e2e/coredns"
pinned=$(awk '($1=="require" && $2=="k8s.io/kubernetes") {print $3} ($1=="k8s.io/kubernetes" && $2 ~ /^v/) {print $2}' "$cp_dir/go.mod")
if [[ "$pinned" != "$KUBERNETES_VERSION" ]]; then
  echo "tools: e2e/controlplane/go.mod requires k8s.io/kubernetes $pinned but tools.env pins $KUBERNETES_VERSION" >&2
  exit 1
fi

pinned_dns=$(awk '($1=="require" && $2=="github.com/coredns/coredns") {print $3} ($1=="github.com/coredns/coredns" && $2 ~ /^v/) {print $2}' "$dns_dir/go.mod")
if [[ "$pinned_dns" != "$COREDNS_VERSION" ]]; then
  echo "tools: e2e/coredns/go.mod requires github.com/coredns/coredns $pinned_dns but tools.env pins $COREDNS_VERSION" >&2
  exit 1
fi

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitTreeState=clean"

# build NAME DIR BUILD-COMMAND...: runs the command with $out set to a temporary file and moves it into
# DIR/NAME on success, so an interrupted build never leaves a half-written binary in the cache.
build() {
  local name=$1 dir=$2; shift 2
  if [[ ! -x "$dir/$name" ]]; then
    echo "tools: building $name into $dir (first time on this machine; this takes a while)" >&2
    mkdir -p "$dir"
    local start=$SECONDS
    out=$(mktemp "$dir/.$name.XXXXXX")
    if ! "$@"; then rm -f "$out"; echo "tools: building $name failed" >&2; exit 1; fi
    chmod +x "$out" && mv -f "$out" "$dir/$name"
    echo "tools: built $name in $((SECONDS - start))s" >&2
  fi
  ln -sfn "$dir/$name" "$bin/$name"
}

go_build_controlplane() { (cd "$cp_dir" && go build -trimpath -ldflags "$ldflags" -o "$out" .); }
go_build_kubectl() { (cd "$cp_dir" && go build -trimpath -ldflags "$ldflags" -o "$out" k8s.io/kubernetes/cmd/kubectl); }
go_build_k8s() { (cd "$cp_dir" && go build -trimpath -ldflags "$ldflags" -o "$out" "k8s.io/kubernetes/cmd/$1"); }
go_build_coredns() { (cd "$dns_dir" && go build -trimpath -ldflags "-s -w" -o "$out" .); }
go_install() { # module@version cmd-path
  local tmp; tmp=$(mktemp -d)
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$1" && mv -f "$tmp/$2" "$out"
  local rc=$?; rm -rf "$tmp"; return $rc
}

exec 9>"$cache/.lock"
flock 9

if [[ "$group" == node ]]; then
  # The node's programs depend on the module's requirements, not on the launcher's own source.
  mod_key=$(cat "$cp_dir/go.mod" "$cp_dir/go.sum" <(go env GOVERSION) | sha256sum | cut -c1-16)
  for cmd in kubelet kube-scheduler kube-proxy; do
    build "$cmd" "$cache/$cmd-$KUBERNETES_VERSION-$mod_key" go_build_k8s "$cmd"
  done
  dns_key=$(cat "$dns_dir/go.mod" "$dns_dir/go.sum" "$dns_dir"/*.go <(go env GOVERSION) | sha256sum | cut -c1-16)
  build coredns "$cache/coredns-$COREDNS_VERSION-$dns_key" go_build_coredns
  exit 0
fi

cp_key=$(cat "$cp_dir/go.mod" "$cp_dir/go.sum" "$cp_dir"/*.go <(go env GOVERSION) | sha256sum | cut -c1-16)
build controlplane "$cache/controlplane-$KUBERNETES_VERSION-$cp_key" go_build_controlplane
build kubectl "$cache/kubectl-$KUBERNETES_VERSION" go_build_kubectl
build opa "$cache/opa-$OPA_VERSION" go_install "github.com/open-policy-agent/opa@$OPA_VERSION" opa
build helm "$cache/helm-$HELM_VERSION" go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" helm
build krew "$cache/krew-$KREW_VERSION" go_install "sigs.k8s.io/krew/cmd/krew@$KREW_VERSION" krew
