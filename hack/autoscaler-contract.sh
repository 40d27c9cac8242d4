#!/usr/bin/env bash
# Builds (once per autoscaler version and contract test) and caches the cluster autoscaler's
# own Cluster API provider tests, k8s.io/autoscaler/cluster-autoscaler/cloudprovider/clusterapi,
# compiled together with test/autoscaler/testdata/proxmoxtalos_contract_test.go: a test that
# drives the autoscaler's real node-group code (TemplateNodeInfo, IncreaseSize from zero)
# with the ProxmoxTalosMachineTemplate status this provider publishes
# (test/autoscaler/testdata/workers.json). test/autoscaler runs the cached binary.
# `make test` (and so .ci/run) runs this script before the tests (target autoscaler-contract).
#
# Why not the autoscaler binary itself, in the lab: the module proxy serves no consistent
# pair of the autoscaler and its `apis` sub-module (docs/autoscaling.md, "Why the real
# cluster-autoscaler is not in the lab"); the clusterapi provider package does not import the
# missing API package, so it and its tests build.
#
# Version: the autoscaler tags releases `cluster-autoscaler-1.x.y`, which are no Go module
# versions of the sub-module; the pseudo-version pinned here (commit 1959f5f6, 2025-06-13,
# the 1.33 line, k8s.io/* v0.33.1) is the newest the proxy serves. sum.golang.org has no
# record of it (lookup 404), so GONOSUMDB=k8s.io/autoscaler skips the checksum database for
# that module path only; every other dependency is checked against the module's go.sum.
# It is built in a copy of its own module: its go.mod pins the k8s.io staging modules with
# `replace` lines, honoured only in the main module; the zip has no ./apis (a module of its
# own that go.mod replaces with a path), so that replace is pointed at the apis version its
# go.mod requires, which the proxy serves.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/cluster-api-provider-proxmox-talos/lab/
#   autoscaler-contract-<version>-<sha256 of the contract test, 12>/clusterapi-contract.test
# (+ BUILDINFO); built in a temporary sibling, then renamed.
#
# Usage:
#   hack/autoscaler-contract.sh          build if missing; print the test binary's path
#   hack/autoscaler-contract.sh --dir    print the cache directory (never builds)
#   hack/autoscaler-contract.sh --check  exit 0 if cached (never builds)
# Overrides: CA_VERSION, LAB_CACHE_ROOT, BUILD_PARALLELISM (go -p).
set -euo pipefail

CA_VERSION=${CA_VERSION:-v0.0.0-20250613073258-1959f5f61f6c}
LAB_CACHE_ROOT=${LAB_CACHE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/cluster-api-provider-proxmox-talos/lab}
BUILD_PARALLELISM=${BUILD_PARALLELISM:-2}
CA_MOD=k8s.io/autoscaler/cluster-autoscaler
PKG=./cloudprovider/clusterapi
BIN=clusterapi-contract.test

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
contract_test=${root}/test/autoscaler/testdata/proxmoxtalos_contract_test.go

log() { echo "autoscaler-contract: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f "${contract_test}" ]] || die "missing ${contract_test}"
test_sum=$(sha256sum "${contract_test}" | cut -c1-12)
dir_of() { echo "${LAB_CACHE_ROOT}/autoscaler-contract-${CA_VERSION}-${test_sum}"; }
cached() { [[ -x "$(dir_of)/${BIN}" && -f "$(dir_of)/BUILDINFO" ]]; }

# Never the repository's module or workspace; the one module without a checksum record is
# named, nothing else is exempt.
gowrap() { GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 GONOSUMDB=k8s.io/autoscaler go "$@"; }

build() {
  local start work src apis_version tmp
  start=$(date +%s)
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: work is local
  trap "chmod -R u+w '${work}' 2>/dev/null; rm -rf '${work}'" EXIT
  cd "${work}" # outside any module: the download must not touch the caller's go.mod/go.sum
  log "downloading ${CA_MOD}@${CA_VERSION}"
  gowrap mod download -json "${CA_MOD}@${CA_VERSION}" > "${work}/dl.json" ||
    die "cannot download ${CA_MOD}@${CA_VERSION}: $(cat "${work}/dl.json")"
  src=$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' "${work}/dl.json")
  [[ -d "${src}" ]] || die "no module directory in: $(cat "${work}/dl.json")"
  cp -R "${src}" "${work}/src"
  chmod -R u+w "${work}/src"
  cd "${work}/src"
  apis_version=$(sed -n "s#^[[:space:]]*${CA_MOD}/apis \(v[^ ]*\).*#\1#p" go.mod | head -1)
  [[ -n "${apis_version}" ]] || die "go.mod requires no ${CA_MOD}/apis version"
  gowrap mod edit -replace "${CA_MOD}/apis=${CA_MOD}/apis@${apis_version}"
  cp "${contract_test}" "${PKG}/zz_proxmoxtalos_contract_test.go"
  tmp=$(mktemp -d "${LAB_CACHE_ROOT}/.tmp-autoscaler-contract-XXXXXX")
  log "compiling ${CA_MOD}/${PKG#./} tests + the contract test (apis ${apis_version})"
  nice -n 10 env GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 GONOSUMDB=k8s.io/autoscaler \
    go test -c -p "${BUILD_PARALLELISM}" -o "${tmp}/${BIN}" "${PKG}" >&2
  {
    echo "name: autoscaler-contract"
    echo "version: ${CA_VERSION}"
    echo "apis: ${apis_version}"
    echo "contract-test-sha256: ${test_sum}"
    echo "go: $(go env GOVERSION)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "seconds: $(($(date +%s) - start))"
  } > "${tmp}/BUILDINFO"
  rm -rf "$(dir_of)"
  mv "${tmp}" "$(dir_of)"
  log "cached in $(dir_of) after $(($(date +%s) - start))s"
}

case "${1:-}" in
  "")
    if ! cached; then
      mkdir -p "${LAB_CACHE_ROOT}"
      exec 8>"${LAB_CACHE_ROOT}/.lock-autoscaler-contract"
      flock 8
      rm -rf "${LAB_CACHE_ROOT}/.tmp-autoscaler-contract-"*
      cached || (build)
      flock -u 8
    fi
    cached || die "autoscaler contract test missing after build"
    echo "$(dir_of)/${BIN}"
    ;;
  --dir) dir_of ;;
  --check) cached ;;
  -h | --help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown argument '$1'" ;;
esac
