#!/usr/bin/env bash
# Provides kube-apiserver and etcd binaries for envtest and the lab, and prints the directory
# that holds them (use it as KUBEBUILDER_ASSETS).
#
# Order of preference:
#   1. the cache: ${CACHE_ROOT}/envtest/k8s-<ver>-etcd-<ver>/ (never rebuilt once present);
#   2. setup-envtest's normal download, only when ENVTEST_SOURCE=download (needs internet; this
#      project's CI and labs are offline, so the default never dials out);
#   3. a build from the Go module proxy: a throw-away wrapper module requires
#      k8s.io/kubernetes and replaces every ./staging module named in its go.mod with the
#      published k8s.io/<name> v0.<minor>.<patch>; etcd's main is the root of
#      go.etcd.io/etcd/server/v3. About 25 minutes cold on 2 cores, once per machine.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.7.3}
CACHE_ROOT=${CACHE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/cluster-api-provider-proxmox-talos}
ENVTEST_SOURCE=${ENVTEST_SOURCE:-build}

dest="${CACHE_ROOT}/envtest/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
log() { echo "envtest-assets: $*" >&2; }

if [[ -x "${dest}/kube-apiserver" && -x "${dest}/etcd" ]]; then
  echo "${dest}"
  exit 0
fi

if [[ "${ENVTEST_SOURCE}" == "download" ]]; then
  log "downloading with setup-envtest (ENVTEST_SOURCE=download)"
  dir=$(go run sigs.k8s.io/controller-runtime/tools/setup-envtest@latest use "${K8S_VERSION}" -p path)
  mkdir -p "${dest}"
  cp "${dir}/kube-apiserver" "${dir}/etcd" "${dest}/"
  echo "${dest}"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
staging_minor="v0.${K8S_VERSION#1.}"

if [[ ! -x "${dest}/etcd" ]]; then
  log "building etcd v${ETCD_VERSION} from the Go module proxy"
  mkdir -p "${work}/etcd" "${dest}"
  (
    cd "${work}/etcd"
    go mod init envtest-etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
    go get -tool "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${dest}/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "${dest}/etcd.tmp" "${dest}/etcd"
  )
fi

if [[ ! -x "${dest}/kube-apiserver" ]]; then
  log "building kube-apiserver v${K8S_VERSION} from the Go module proxy (about 25 minutes cold)"
  mkdir -p "${work}/apiserver"
  (
    cd "${work}/apiserver"
    go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" >/dev/null
    kmod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v${K8S_VERSION}.mod
    {
      echo "module envtest-apiserver"
      echo
      echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1.0/')"
      echo
      echo "require k8s.io/kubernetes v${K8S_VERSION}"
      echo
      echo "replace ("
      # every staging module k8s.io/kubernetes requires at v0.0.0
      grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "${kmod}" | awk -v v="${staging_minor}" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > go.mod
    go get -tool k8s.io/kubernetes/cmd/kube-apiserver >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} \
      -X k8s.io/client-go/pkg/version.gitVersion=v${K8S_VERSION}" \
      -o "${dest}/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
    mv "${dest}/kube-apiserver.tmp" "${dest}/kube-apiserver"
  )
fi

echo "${dest}"
