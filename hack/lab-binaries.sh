#!/usr/bin/env bash
# Builds (once) and caches the management-plane binaries the lab runs, from the Go module proxy:
#
#   name        version  binary      source
#   capi-core   v1.14.2  manager     sigs.k8s.io/cluster-api/core            (wrapper module A)
#   clusterctl  v1.14.2  clusterctl  sigs.k8s.io/cluster-api/cmd/clusterctl  (wrapper module A)
#   cabpt       v0.6.12  manager     github.com/siderolabs/cluster-api-bootstrap-provider-talos     (B)
#   cacppt      v0.5.13  manager     github.com/siderolabs/cluster-api-control-plane-provider-talos (B)
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/cluster-api-provider-proxmox-talos/lab/<name>-<version>/
# Each directory holds the binary, the provider's kustomize `config/` tree (CRD bases, webhook
# manifests, RBAC: what the lab installs "the way clusterctl would") and BUILDINFO. A directory
# exists only when complete (built in a temporary sibling, then renamed), so it is never rebuilt.
#
# Usage:
#   hack/lab-binaries.sh            build what is missing; print "<name>=<dir>" for each binary
#   hack/lab-binaries.sh NAME       build what is missing; print the path of NAME's binary
#   hack/lab-binaries.sh --dir NAME print NAME's cache directory
#   hack/lab-binaries.sh --check    exit 0 if everything is cached, 1 otherwise (never builds)
# Logs go to stderr. Safe to run concurrently (flock on <cache>/.lock).
#
# Wrapper module A requires sigs.k8s.io/cluster-api AND sigs.k8s.io/cluster-api/api at the same
# version (the root module's go.mod points api at a local ./api replace that consumers ignore).
# Wrapper module B lets CABPT/CACPPT's go.mod decide the CAPI line (v1.10.x); their own
# `replace github.com/google/cel-go => v0.22.0` is ignored in a dependency, so B repeats it.
# Their module roots are `package main`; `go install mod@ver` fails because of that replace.
#
# Overrides: CAPI_VERSION, CABPT_VERSION, CACPPT_VERSION, LAB_CACHE_ROOT, BUILD_PARALLELISM (go -p).
# Cold cost on 2 shared cores: see docs/templates.md ("Lab binaries").
set -euo pipefail

CAPI_VERSION=${CAPI_VERSION:-v1.14.2}
CABPT_VERSION=${CABPT_VERSION:-v0.6.12}
CACPPT_VERSION=${CACPPT_VERSION:-v0.5.13}
CEL_GO_VERSION=${CEL_GO_VERSION:-v0.22.0}
LAB_CACHE_ROOT=${LAB_CACHE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/cluster-api-provider-proxmox-talos/lab}
BUILD_PARALLELISM=${BUILD_PARALLELISM:-2}

CAPI_MOD=sigs.k8s.io/cluster-api
CABPT_MOD=github.com/siderolabs/cluster-api-bootstrap-provider-talos
CACPPT_MOD=github.com/siderolabs/cluster-api-control-plane-provider-talos

NAMES=(capi-core clusterctl cabpt cacppt)

log() { echo "lab-binaries: $*" >&2; }
die() { log "error: $*"; exit 1; }

version_of() {
  case "$1" in
    capi-core | clusterctl) echo "${CAPI_VERSION}" ;;
    cabpt) echo "${CABPT_VERSION}" ;;
    cacppt) echo "${CACPPT_VERSION}" ;;
    *) die "unknown binary name '$1' (known: ${NAMES[*]})" ;;
  esac
}
binary_of() { [[ "$1" == clusterctl ]] && echo clusterctl || echo manager; }
dir_of() { echo "${LAB_CACHE_ROOT}/$1-$(version_of "$1")"; }
path_of() { echo "$(dir_of "$1")/$(binary_of "$1")"; }
cached() { [[ -x "$(path_of "$1")" && -f "$(dir_of "$1")/BUILDINFO" ]]; }

# go in a throw-away module: never the repository's module or workspace.
gowrap() { GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 go "$@"; }

# stage NAME MODDIR CONFIGDIR...: creates a staging directory for NAME holding the listed config
# trees of MODDIR, prints it.
stage() {
  local name=$1 moddir=$2
  shift 2
  local tmp
  tmp=$(mktemp -d "${LAB_CACHE_ROOT}/.tmp-${name}-XXXXXX")
  for c in "$@"; do
    if [[ -d "${moddir}/${c}" ]]; then
      mkdir -p "${tmp}/$(dirname "${c}")"
      cp -R "${moddir}/${c}" "${tmp}/${c}"
    fi
  done
  chmod -R u+w "${tmp}"
  echo "${tmp}"
}

# publish NAME STAGING: atomically turns a complete staging directory into the cache entry.
publish() {
  local name=$1 tmp=$2 dest
  dest=$(dir_of "${name}")
  {
    echo "name: ${name}"
    echo "version: $(version_of "${name}")"
    echo "go: $(go env GOVERSION)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "seconds: ${SECONDS_TAKEN:-unknown}"
  } > "${tmp}/BUILDINFO"
  rm -rf "${dest}"
  mv "${tmp}" "${dest}"
  log "cached ${name} in ${dest}"
}

build_capi() {
  local work start
  work=$(mktemp -d)
  start=$(date +%s)
  log "building CAPI core manager + clusterctl ${CAPI_VERSION} (wrapper module ${work})"
  (
    cd "${work}"
    gowrap mod init lab-capi >/dev/null 2>&1
    gowrap mod edit -require "${CAPI_MOD}@${CAPI_VERSION}" -require "${CAPI_MOD}/api@${CAPI_VERSION}"
    gowrap get -tool "${CAPI_MOD}/core@${CAPI_VERSION}" "${CAPI_MOD}/cmd/clusterctl@${CAPI_VERSION}" >&2
    [[ "$(gowrap list -m -f '{{.Version}}' "${CAPI_MOD}")" == "${CAPI_VERSION}" ]] ||
      die "wrapper module did not keep ${CAPI_MOD} ${CAPI_VERSION}"
    local moddir ldflags
    moddir=$(gowrap list -m -f '{{.Dir}}' "${CAPI_MOD}")
    # version stamping: clusterctl reports it and compares it with provider contracts.
    ldflags="-s -w -X sigs.k8s.io/cluster-api/version.gitVersion=${CAPI_VERSION}"
    ldflags+=" -X sigs.k8s.io/cluster-api/version.gitTreeState=clean"
    if ! cached capi-core; then
      local t
      t=$(stage capi-core "${moddir}" core/config)
      gowrap build -p "${BUILD_PARALLELISM}" -trimpath -ldflags "${ldflags}" -o "${t}/manager" "${CAPI_MOD}/core" >&2
      SECONDS_TAKEN=$(($(date +%s) - start)) publish capi-core "${t}"
    fi
    if ! cached clusterctl; then
      local t
      t=$(stage clusterctl "${moddir}" cmd/clusterctl/config)
      gowrap build -p "${BUILD_PARALLELISM}" -trimpath -ldflags "${ldflags}" -o "${t}/clusterctl" "${CAPI_MOD}/cmd/clusterctl" >&2
      SECONDS_TAKEN=$(($(date +%s) - start)) publish clusterctl "${t}"
    fi
  )
  rm -rf "${work}"
  log "CAPI ${CAPI_VERSION} done in $(($(date +%s) - start))s"
}

build_talos() {
  local work start
  work=$(mktemp -d)
  start=$(date +%s)
  log "building CABPT ${CABPT_VERSION} + CACPPT ${CACPPT_VERSION} managers (wrapper module ${work})"
  (
    cd "${work}"
    # verify both releases exist on the proxy before writing anything
    for mv in "${CABPT_MOD}@${CABPT_VERSION}" "${CACPPT_MOD}@${CACPPT_VERSION}"; do
      gowrap mod download -json "${mv}" > dl.json || die "cannot download ${mv}: $(cat dl.json)"
      local gomod
      gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' dl.json)
      log "${mv}: $(grep -E '^\s*sigs.k8s.io/cluster-api ' "${gomod}" | xargs) ; replaces: $(grep -E '=>' "${gomod}" | xargs)"
    done
    gowrap mod init lab-talos >/dev/null 2>&1
    gowrap mod edit -replace "github.com/google/cel-go=github.com/google/cel-go@${CEL_GO_VERSION}"
    gowrap get -tool "${CABPT_MOD}@${CABPT_VERSION}" "${CACPPT_MOD}@${CACPPT_VERSION}" >&2
    log "wrapper B resolved: $(gowrap list -m -f '{{.Path}}@{{.Version}}' ${CAPI_MOD} ${CABPT_MOD} ${CACPPT_MOD} | xargs)"
    for name in cabpt cacppt; do
      cached "${name}" && continue
      local mod t
      [[ "${name}" == cabpt ]] && mod=${CABPT_MOD} || mod=${CACPPT_MOD}
      t=$(stage "${name}" "$(gowrap list -m -f '{{.Dir}}' "${mod}")" config)
      gowrap build -p "${BUILD_PARALLELISM}" -trimpath -ldflags "-s -w" -o "${t}/manager" "${mod}" >&2
      SECONDS_TAKEN=$(($(date +%s) - start)) publish "${name}" "${t}"
    done
  )
  rm -rf "${work}"
  log "CABPT/CACPPT done in $(($(date +%s) - start))s"
}

# ensure NAME...: builds the wrapper module(s) that provide the missing ones among NAME...
ensure() {
  local missing=() n
  for n in "$@"; do cached "${n}" || missing+=("${n}"); done
  [[ ${#missing[@]} == 0 ]] && return 0
  mkdir -p "${LAB_CACHE_ROOT}"
  exec 9>"${LAB_CACHE_ROOT}/.lock"
  if ! flock -n 9; then
    log "another build holds ${LAB_CACHE_ROOT}/.lock; waiting"
    flock 9
  fi
  rm -rf "${LAB_CACHE_ROOT}"/.tmp-* # leftovers of interrupted builds (we hold the lock)
  local want=" ${missing[*]} "
  if [[ "${want}" == *" capi-core "* || "${want}" == *" clusterctl "* ]] && { ! cached capi-core || ! cached clusterctl; }; then
    build_capi
  fi
  if [[ "${want}" == *" cabpt "* || "${want}" == *" cacppt "* ]] && { ! cached cabpt || ! cached cacppt; }; then
    build_talos
  fi
  flock -u 9
  exec 9>&-
  for n in "$@"; do cached "${n}" || die "${n} missing after build"; done
}

case "${1:-}" in
  "")
    ensure "${NAMES[@]}"
    for n in "${NAMES[@]}"; do echo "${n}=$(dir_of "${n}")"; done
    ;;
  --dir)
    [[ -n "${2:-}" ]] || die "--dir needs a name (${NAMES[*]})"
    dir_of "$2"
    ;;
  --check)
    for n in "${NAMES[@]}"; do cached "${n}" || exit 1; done
    ;;
  -h | --help)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    version_of "$1" >/dev/null
    ensure "$1"
    path_of "$1"
    ;;
esac
