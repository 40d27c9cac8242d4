#!/usr/bin/env bash
# Runs every native Go fuzz target for a short bounded time each (FUZZTIME, default 10s).
# Seeds live in each package's testdata/fuzz/<Target>/ (committed) and in the f.Add calls;
# plain `go test` replays them as regression tests. A crasher is written by Go to
# testdata/fuzz/<Target>/: fix the code, keep the file, and it guards the fix from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-10s}
# One fuzz worker per target: the machine has 2 cores shared with other work.
FUZZ_PARALLEL=${FUZZ_PARALLEL:-1}

targets=(
  "./internal/webhooks FuzzValidateClusterSpec"
  "./internal/webhooks FuzzValidateMachineSpec"
  "./pkg/bootstrap FuzzNetworkRenderers"
  "./pkg/bootstrap FuzzMetaData"
  "./pkg/bootstrap FuzzISO"
  "./pkg/proxmox FuzzDecoders"
  "./pkg/proxmox/pvesim FuzzRequest"
  "./pkg/proxmox/pvesim FuzzPropString"
)

failed=0
for t in "${targets[@]}"; do
  read -r pkg name <<<"${t}"
  echo "fuzz: ${pkg} ${name} for ${FUZZTIME}"
  # -vet=off: `make lint` vets; here only the instrumented build and the fuzzing cost time.
  if ! go test -vet=off "${pkg}" -run "^${name}\$" -fuzz "^${name}\$" -fuzztime "${FUZZTIME}" -parallel "${FUZZ_PARALLEL}"; then
    echo "fuzz: ${pkg} ${name} FAILED: the crasher is in ${pkg#./}/testdata/fuzz/${name}/; fix the code and commit it as a regression seed"
    failed=1
  fi
done
exit "${failed}"
