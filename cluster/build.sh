#!/usr/bin/env bash
# Build the cluster's binaries from the Go module proxy into $CLUSTER_DIR/bin, pinned by
# cluster/versions.env; a build whose versions, script and Go sources are unchanged is reused
# (a stamp file).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=cluster/versions.env
source "$here/versions.env"
bin=$(realpath -m "${CLUSTER_DIR:-$here/../.cluster}")/bin  # absolute: each build runs in its module
stamp="$bin/.versions"
# Go's module and build caches for these builds are their own, under the cluster's folder, and
# emptied as they go: kept, a cold build left about 15 GiB (8.7 build cache, 6.2 modules). Each
# component's build cache goes once it is built, the module cache on exit; the binaries stay.
go_caches=$(dirname "$bin")/go
export GOMODCACHE=$go_caches/mod GOCACHE=$go_caches/build
only=${1:-all}  # `prometheus`: that binary alone, all `make up` and `make demo` need
inputs() { cat "$here/versions.env" "$here/build.sh" "$here"/build/*/*.go "$here"/build/*/go.mod; }
if [[ $only == all ]] && [[ -f "$stamp" ]] && cmp -s "$stamp" <(inputs); then
  echo "cluster binaries in $bin are current"
  exit 0
fi
# The Go that builds them: GO_VERSION, which an older go (1.21+) fetches through the module proxy.
GOTOOLCHAIN=$(cd "$here/.." && python3 -m cluster.preflight toolchain)
export GOTOOLCHAIN
[[ $GOTOOLCHAIN == local ]] || echo "$(GOTOOLCHAIN=local go env GOVERSION) is older than go$GO_VERSION: the go command fetches $GOTOOLCHAIN"
mkdir -p "$bin"
trap 'go clean -modcache; rm -rf "$go_caches"' EXIT
build() {  # build <module folder> <output> [packages]: a static binary, stripped, versioned
  local folder=$1 output=$2; shift 2
  (cd "$here/build/$folder" && go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $version_flags" -o "$output" "${@:-.}")
  go clean -cache
}
# What the release build stamps in (`kubectl version`, the node's kubeletVersion, skew checks).
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
version_flags=""
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $package.gitVersion=$KUBERNETES_VERSION -X $package.gitMajor=1 -X $package.gitMinor=$minor"
  version_flags+=" -X $package.gitTreeState=clean"
done
started=$SECONDS
build_prometheus() {
  # Only the file and Kubernetes service discovery: the cloud SDKs of the others stay out.
  local release=${PROMETHEUS_VERSION#v0.}  # the module's v0.316.0 is Prometheus 3.16.0
  (cd "$here/build/prometheus" && go mod edit -require="github.com/prometheus/prometheus@$PROMETHEUS_VERSION")
  local version_flags="-X github.com/prometheus/common/version.Version=3.${release:1}"
  GOFLAGS=-tags=remove_all_sd,enable_kubernetes_sd build prometheus "$bin/" \
    github.com/prometheus/prometheus/cmd/prometheus
}
if [[ $only == prometheus ]]; then
  build_prometheus
  echo "built Prometheus into $bin in $((SECONDS - started)) s"
  exit 0
fi
# k8s.io/kubernetes points its staging modules at ./staging; a dependency needs their published versions.
(
  cd "$here/build/kubernetes"
  go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
  for module in $(go mod edit -json | python3 -c 'import json,sys; print(" ".join(r["Old"]["Path"] for r in json.load(sys.stdin).get("Replace") or []))'); do
    go mod edit -replace="$module=$module@$KUBERNETES_STAGING_VERSION"
  done
)
(cd "$here/build/etcd" && go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION")
(cd "$here/build/coredns" && go mod edit -require="github.com/coredns/coredns@$COREDNS_VERSION")
(cd "$here/build/keda" && go mod edit -require="github.com/kedacore/keda/v2@$KEDA_VERSION")
(cd "$here/build/registry" && go mod edit -require="github.com/distribution/distribution/v3@$DISTRIBUTION_VERSION")
(cd "$here/build/buildkit" && go mod edit -require="github.com/moby/buildkit@$BUILDKIT_VERSION" \
  -require="github.com/rootless-containers/rootlesskit/v3@$ROOTLESSKIT_VERSION")
build kubernetes "$bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl
build etcd "$bin/etcd"
build registry "$bin/registry"
build pause "$bin/pause"
build coredns "$bin/coredns"
version_flags="-X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
build keda "$bin/" github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter
mv "$bin/operator" "$bin/keda" && mv "$bin/adapter" "$bin/keda-adapter"  # the names KEDA's manifests run
# KEDA's own manifests (CRDs, RBAC, the two Deployments, the APIService), which cluster/keda.py applies.
keda_source=$(cd "$here/build/keda" && go list -m -f '{{.Dir}}' github.com/kedacore/keda/v2)
rm -rf "$bin/keda-config" && mkdir -p "$bin/keda-config"
(cd "$keda_source/config" && cp --parents -r crd/bases general rbac service_account manager metrics-server "$bin/keda-config/")
chmod -R u+w "$bin/keda-config"
build_prometheus
version_flags="-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION"
build buildkit "$bin/" github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl \
  github.com/rootless-containers/rootlesskit/v3/cmd/rootlesskit
# BuildKit's own wrapper that starts a throwaway buildkitd (under rootlesskit when not root) for one build.
install -m 0755 "$(cd "$here/build/buildkit" && go list -m -f '{{.Dir}}' github.com/moby/buildkit)/examples/buildctl-daemonless/buildctl-daemonless.sh" "$bin/"
inputs > "$stamp"
echo "built the cluster binaries into $bin in $((SECONDS - started)) s"
