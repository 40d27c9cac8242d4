package testenv

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// HowToGetAssets tells a developer how to get the binaries envtest, lab and e2e tests need.
const HowToGetAssets = "build them once with `make envtest-assets` (kube-apiserver and etcd, about 25 minutes cold) " +
	"and `make lab-binaries` (CAPI core, clusterctl, CABPT, CACPPT), or set KUBEBUILDER_ASSETS to a directory holding kube-apiserver and etcd"

// InCI reports whether the tests run in CI (CI=true, as .ci/run and most CI systems set it).
// There a test that cannot run is a failure, never a skip: a suite must not go green
// without running.
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// SkipOrFail skips the test locally and fails it under CI=true. The reason should say what
// is missing and how to get it. Every test that depends on envtest assets, the lab binaries,
// the e2e lab or ../shared goes through here, so a missing prerequisite cannot pass CI
// silently.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI=true: a test that cannot run fails the run)", reason)
	}
	t.Skip(reason)
}

// RequireAssets returns the envtest assets directory; without it the test skips (locally)
// or fails (CI=true), saying how to build the assets.
func RequireAssets(t testing.TB) string {
	t.Helper()
	dir, err := AssetsDir()
	if err != nil {
		SkipOrFail(t, "envtest assets unavailable: %v; %s", err, HowToGetAssets)
	}
	return dir
}

// NoAssetsInMain is for a TestMain whose suite needs an API server and could not start one:
// under CI=true it fails the test binary (exit 1); locally it prints why and how to get the
// assets, and the caller runs the tests, whose API-server tests then skip through
// SkipOrFail.
func NoAssetsInMain(err error) {
	if InCI() {
		fmt.Fprintf(os.Stderr, "FAIL: envtest unavailable: %v (CI=true: a suite that cannot run fails the run)\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "envtest unavailable, API-server tests skip: %v\n%s\n", err, HowToGetAssets)
}
