// Package testenv starts a real kube-apiserver and etcd (controller-runtime's envtest) with
// this provider's CRDs and webhook configurations and Cluster API's CRDs installed, for tests
// that must talk to an API server.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Versions of the API server and etcd the tests run against; hack/envtest-assets.sh builds
// them into the cache below.
const (
	KubernetesVersion = "1.37.2"
	EtcdVersion       = "3.7.3"
)

// RepoRoot is the root of this repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// AssetsDir finds the kube-apiserver and etcd binaries: $KUBEBUILDER_ASSETS, else the
// cache hack/envtest-assets.sh fills.
func AssetsDir() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	cacheRoot := os.Getenv("CACHE_ROOT")
	if cacheRoot == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cacheRoot = filepath.Join(base, "cluster-api-provider-proxmox-talos")
	}
	dir := filepath.Join(cacheRoot, "envtest", fmt.Sprintf("k8s-%s-etcd-%s", KubernetesVersion, EtcdVersion))
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		return "", fmt.Errorf("no kube-apiserver in %s and KUBEBUILDER_ASSETS is unset: run `make test` (it builds them) or hack/envtest-assets.sh", dir)
	}
	return dir, nil
}

var (
	moduleDirs   = map[string]string{}
	moduleDirsMu sync.Mutex
)

// ModuleDir returns the module cache directory of a dependency of this module.
func ModuleDir(module string) (string, error) {
	moduleDirsMu.Lock()
	defer moduleDirsMu.Unlock()
	if dir, ok := moduleDirs[module]; ok {
		return dir, nil
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module)
	cmd.Dir = RepoRoot()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locating module %s: %w", module, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		if err := exec.Command("go", "mod", "download", module).Run(); err != nil {
			return "", fmt.Errorf("downloading module %s: %w", module, err)
		}
		return ModuleDir(module)
	}
	moduleDirs[module] = dir
	return dir, nil
}

// Options tune the environment.
type Options struct {
	// Webhooks installs this provider's webhook configurations; the caller must run a
	// webhook server on env.WebhookInstallOptions' host, port and cert dir.
	Webhooks bool
}

// New returns an envtest environment (not started) with this provider's CRDs and Cluster
// API's core CRDs.
func New(opts Options) (*envtest.Environment, error) {
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	capi, err := ModuleDir("sigs.k8s.io/cluster-api")
	if err != nil {
		return nil, err
	}
	root := RepoRoot()
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDInstallOptions: envtest.CRDInstallOptions{
			Paths:              []string{filepath.Join(root, "config", "crd", "bases"), filepath.Join(capi, "core", "config", "crd", "bases")},
			ErrorIfPathMissing: true,
		},
		ErrorIfCRDPathMissing: true,
	}
	if opts.Webhooks {
		env.WebhookInstallOptions = envtest.WebhookInstallOptions{
			Paths:            []string{filepath.Join(root, "config", "webhook", "manifests.yaml")},
			LocalServingHost: "127.0.0.1",
		}
	}
	return env, nil
}
