package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	clusterctlv1 "sigs.k8s.io/cluster-api/cmd/clusterctl/api/v1alpha3"
	clusterctlconfig "sigs.k8s.io/cluster-api/cmd/clusterctl/client/config"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/release"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// The four providers of the lab, as a user names them to clusterctl:
//
//	clusterctl init --core cluster-api --bootstrap talos --control-plane talos --infrastructure proxmox-talos
//
// "talos" and "cluster-api" are clusterctl built-ins pointing at GitHub releases; the lab's
// clusterctl config overrides them with file:// repositories, as clusterctl documents for
// air-gapped installs.
const (
	clusterctlCore         = "cluster-api"
	clusterctlTalos        = "talos"
	clusterctlProxmoxTalos = "proxmox-talos"
)

// RepoProvider is one provider release in a local clusterctl repository.
type RepoProvider struct {
	// Name is clusterctl's provider name (cluster-api, talos, proxmox-talos).
	Name string
	// Type is clusterctl's provider type (CoreProvider, BootstrapProvider, ...).
	Type clusterctlv1.ProviderType
	// Version is the release directory (v1.14.2).
	Version string
	// ComponentsFile is the components file name clusterctl is pointed at
	// (core-components.yaml, bootstrap-components.yaml, ...).
	ComponentsFile string
	Components     []byte
	Metadata       []byte
	// Files are further release assets (cluster templates, ClusterClasses) by name.
	Files map[string][]byte
}

// ManifestLabel is the directory clusterctl expects the provider's releases in and the value
// of the cluster.x-k8s.io/provider label on everything it installs (bootstrap-talos, ...).
func (p RepoProvider) ManifestLabel() string { return clusterctlv1.ManifestLabel(p.Name, p.Type) }

// CertManagerRelease is what clusterctl installs (or finds) as cert-manager.
type CertManagerRelease struct {
	Version    string
	Components []byte
}

// ClusterctlRepo is a local clusterctl repository laid out as clusterctl reads file://
// repositories ({root}/{provider-label}/{version}/{file}), plus the clusterctl config that
// points every provider and cert-manager at it.
type ClusterctlRepo struct {
	Root string
	// ConfigPath is the clusterctl config (--config).
	ConfigPath  string
	Providers   []RepoProvider
	CertManager string
	// Bin is the clusterctl binary.
	Bin string
}

// clusterctlConfigFile is the part of clusterctl's config file the lab writes.
type clusterctlConfigFile struct {
	// Never ask GitHub for a newer clusterctl: no traffic leaves loopback.
	DisableVersionCheck string                     `json:"CLUSTERCTL_DISABLE_VERSIONCHECK"`
	Providers           []clusterctlConfigProvider `json:"providers"`
	CertManager         clusterctlConfigCM         `json:"cert-manager"`
}

type clusterctlConfigProvider struct {
	Name string `json:"name"`
	Type string `json:"type"`
	URL  string `json:"url"`
}

type clusterctlConfigCM struct {
	URL     string `json:"url"`
	Version string `json:"version"`
	// Timeout bounds clusterctl's wait for the cert-manager API; the CRDs alone answer at once.
	Timeout string `json:"timeout"`
}

// certManagerComponentsFile is the file name clusterctl's default cert-manager URL ends in.
const certManagerComponentsFile = "cert-manager.yaml"

// componentsURL is the file:// URL clusterctl resolves to {root}/{label}/{version}/{file}.
func componentsURL(root, label, version, file string) string {
	return "file://" + filepath.Join(root, label, version, file)
}

// RenderClusterctlConfig renders the clusterctl config for a repository rooted at root.
func RenderClusterctlConfig(root string, providers []RepoProvider, certManagerVersion string) ([]byte, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("clusterctl needs an absolute repository path, got %q", root)
	}
	cfg := clusterctlConfigFile{
		DisableVersionCheck: "true",
		CertManager: clusterctlConfigCM{
			URL:     componentsURL(root, "cert-manager", certManagerVersion, certManagerComponentsFile),
			Version: certManagerVersion,
			Timeout: "2m",
		},
	}
	for _, p := range providers {
		if p.Name == "" || p.Type == "" || p.Version == "" || p.ComponentsFile == "" {
			return nil, fmt.Errorf("provider %+v: name, type, version and components file are required", p.Name)
		}
		cfg.Providers = append(cfg.Providers, clusterctlConfigProvider{
			Name: p.Name, Type: string(p.Type),
			URL: componentsURL(root, p.ManifestLabel(), p.Version, p.ComponentsFile),
		})
	}
	return yaml.Marshal(cfg)
}

// WriteClusterctlRepo lays out the providers and cert-manager under root and writes the
// clusterctl config next to them (root/clusterctl.yaml).
func WriteClusterctlRepo(root string, providers []RepoProvider, cm CertManagerRelease) (*ClusterctlRepo, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	write := func(path string, b []byte) error {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		return os.WriteFile(path, b, 0o644)
	}
	if err := write(filepath.Join(root, "cert-manager", cm.Version, certManagerComponentsFile), cm.Components); err != nil {
		return nil, err
	}
	for _, p := range providers {
		dir := filepath.Join(root, p.ManifestLabel(), p.Version)
		if len(p.Components) == 0 || len(p.Metadata) == 0 {
			return nil, fmt.Errorf("provider %s %s: components and metadata.yaml are required", p.ManifestLabel(), p.Version)
		}
		if err := write(filepath.Join(dir, p.ComponentsFile), p.Components); err != nil {
			return nil, err
		}
		if err := write(filepath.Join(dir, "metadata.yaml"), p.Metadata); err != nil {
			return nil, err
		}
		for name, b := range p.Files {
			if err := write(filepath.Join(dir, name), b); err != nil {
				return nil, err
			}
		}
	}
	cfg, err := RenderClusterctlConfig(root, providers, cm.Version)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(root, "clusterctl.yaml")
	if err := write(path, cfg); err != nil {
		return nil, err
	}
	return &ClusterctlRepo{Root: root, ConfigPath: path, Providers: providers, CertManager: cm.Version}, nil
}

// Provider returns the repository's provider with that manifest label.
func (r *ClusterctlRepo) Provider(label string) (RepoProvider, bool) {
	for _, p := range r.Providers {
		if p.ManifestLabel() == label {
			return p, true
		}
	}
	return RepoProvider{}, false
}

// Run runs the real clusterctl with the repository's config; the combined output is returned
// and appended to logPath (when set) under a header naming the command.
func (r *ClusterctlRepo) Run(ctx context.Context, logPath string, args ...string) (string, error) {
	if r.Bin == "" {
		return "", errors.New("no clusterctl binary: the repository was not built by the lab")
	}
	args = append(args, "--config", r.ConfigPath)
	cmd := exec.CommandContext(ctx, r.Bin, args...)
	// The overrides folder and version state live under XDG_CONFIG_HOME: the user's own
	// ~/.config/cluster-api never leaks into the lab.
	cmd.Env = append(os.Environ(), "CLUSTERCTL_DISABLE_VERSIONCHECK=true", "XDG_CONFIG_HOME="+filepath.Join(r.Root, "xdg"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if logPath != "" {
		if f, ferr := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); ferr == nil {
			fmt.Fprintf(f, "### %s clusterctl %s (%s, err=%v)\n%s\n", start.Format(time.RFC3339), strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond), err, out.String())
			_ = f.Close()
		}
	}
	if err != nil {
		return out.String(), fmt.Errorf("clusterctl %s: %w\n%s", args[0], err, out.String())
	}
	return out.String(), nil
}

// BuildClusterctlRepo assembles the lab's local repository under root from what the lab
// already runs: CAPI core, CABPT and CACPPT rendered by kustomize (the module's pinned go
// tool) from the config/ trees cached next to their managers (hack/lab-binaries.sh) with
// their own metadata.yaml, this provider's release as `make release` writes it, and
// cert-manager's CRDs from the cert-manager Go module at the version this clusterctl
// installs by default.
func BuildClusterctlRepo(ctx context.Context, root string) (*ClusterctlRepo, error) {
	ctlDir, err := labBinaryDir(ctx, "clusterctl")
	if err != nil {
		return nil, err
	}
	kustomizeBin, err := release.KustomizeBinary(ctx, testenv.RepoRoot())
	if err != nil {
		return nil, err
	}
	kustomize := func(ctx context.Context, dir string) ([]byte, error) { return kustomizeBuild(ctx, kustomizeBin, dir) }
	var providers []RepoProvider

	capiDir, err := labBinaryDir(ctx, ProviderCAPI)
	if err != nil {
		return nil, err
	}
	capiVersion, err := buildInfoVersion(capiDir)
	if err != nil {
		return nil, err
	}
	core, err := kustomize(ctx, filepath.Join(capiDir, "core", "config", "default"))
	if err != nil {
		return nil, err
	}
	// The cache holds core/config only; metadata.yaml sits at the root of the CAPI module,
	// which the build downloaded (so this reads the module cache).
	capiMod, err := goModuleDir(ctx, "sigs.k8s.io/cluster-api", capiVersion)
	if err != nil {
		return nil, err
	}
	coreMeta, err := os.ReadFile(filepath.Join(capiMod, "metadata.yaml"))
	if err != nil {
		return nil, err
	}
	providers = append(providers, RepoProvider{Name: clusterctlCore, Type: clusterctlv1.CoreProviderType,
		Version: capiVersion, ComponentsFile: "core-components.yaml", Components: core, Metadata: coreMeta})

	for _, t := range []struct {
		name, file string
		typ        clusterctlv1.ProviderType
	}{
		{ProviderCABPT, "bootstrap-components.yaml", clusterctlv1.BootstrapProviderType},
		{ProviderCACPPT, "control-plane-components.yaml", clusterctlv1.ControlPlaneProviderType},
	} {
		dir, err := labBinaryDir(ctx, t.name)
		if err != nil {
			return nil, err
		}
		v, err := buildInfoVersion(dir)
		if err != nil {
			return nil, err
		}
		comp, err := kustomize(ctx, filepath.Join(dir, "config", "default"))
		if err != nil {
			return nil, err
		}
		meta, err := os.ReadFile(filepath.Join(dir, "config", "metadata", "metadata.yaml"))
		if err != nil {
			return nil, err
		}
		providers = append(providers, RepoProvider{Name: clusterctlTalos, Type: t.typ, Version: v,
			ComponentsFile: t.file, Components: comp, Metadata: meta})
	}

	ours, err := ourRelease(ctx, filepath.Join(root, ".release"), kustomizeBin)
	if err != nil {
		return nil, err
	}
	providers = append(providers, ours)

	cm, err := certManagerCRDs(ctx, clusterctlconfig.CertManagerDefaultVersion)
	if err != nil {
		return nil, err
	}
	repo, err := WriteClusterctlRepo(root, providers, cm)
	if err != nil {
		return nil, err
	}
	repo.Bin = filepath.Join(ctlDir, "clusterctl")
	return repo, nil
}

// ourRelease writes this tree's release assets into outDir with the library behind `make
// release` (version: the newest release series of metadata.yaml) and reads them back as
// the proxmox-talos provider: exactly what a user's clusterctl would download, image
// reference included (it is never pulled: the manager runs as a process).
func ourRelease(ctx context.Context, outDir, kustomizeBin string) (RepoProvider, error) {
	root := testenv.RepoRoot()
	meta, err := os.ReadFile(filepath.Join(root, "metadata.yaml"))
	if err != nil {
		return RepoProvider{}, err
	}
	version, err := LatestReleaseVersion(meta)
	if err != nil {
		return RepoProvider{}, err
	}
	abs, err := filepath.Abs(outDir)
	if err != nil {
		return RepoProvider{}, err
	}
	if err := release.WriteAssets(ctx, release.Options{RepoRoot: root, Version: version, Kustomize: kustomizeBin}, abs); err != nil {
		return RepoProvider{}, fmt.Errorf("release assets %s: %w", version, err)
	}
	p := RepoProvider{Name: clusterctlProxmoxTalos, Type: clusterctlv1.InfrastructureProviderType, Version: version,
		ComponentsFile: release.ComponentsFile, Files: map[string][]byte{}}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return RepoProvider{}, err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(abs, e.Name()))
		if err != nil {
			return RepoProvider{}, err
		}
		switch e.Name() {
		case p.ComponentsFile:
			p.Components = b
		case "metadata.yaml":
			p.Metadata = b
		default:
			p.Files[e.Name()] = b
		}
	}
	if p.Components == nil || p.Metadata == nil {
		return RepoProvider{}, fmt.Errorf("the release wrote no %s or metadata.yaml to %s", p.ComponentsFile, abs)
	}
	return p, nil
}

// LatestReleaseVersion is the vX.Y.0 of the newest release series in a clusterctl
// metadata.yaml: the version a release of this tree is published as.
func LatestReleaseVersion(metadata []byte) (string, error) {
	var md clusterctlv1.Metadata
	if err := yaml.Unmarshal(metadata, &md); err != nil {
		return "", fmt.Errorf("metadata.yaml: %w", err)
	}
	if len(md.ReleaseSeries) == 0 {
		return "", errors.New("metadata.yaml lists no releaseSeries")
	}
	series := append([]clusterctlv1.ReleaseSeries(nil), md.ReleaseSeries...)
	sort.Slice(series, func(i, j int) bool {
		if series[i].Major != series[j].Major {
			return series[i].Major > series[j].Major
		}
		return series[i].Minor > series[j].Minor
	})
	return fmt.Sprintf("v%d.%d.0", series[0].Major, series[0].Minor), nil
}

// certManagerCRDs reads cert-manager's CRDs from its Go module (deploy/crds ships in the
// module zip), served by the Go module proxy: without its controllers the lab has no use for
// more, and the CRDs are all clusterctl's readiness check (an Issuer and a Certificate
// created in a test namespace) needs.
func certManagerCRDs(ctx context.Context, version string) (CertManagerRelease, error) {
	dir, err := goModuleDir(ctx, "github.com/cert-manager/cert-manager", version)
	if err != nil {
		return CertManagerRelease{}, err
	}
	files, err := filepath.Glob(filepath.Join(dir, "deploy", "crds", "*.yaml"))
	if err != nil {
		return CertManagerRelease{}, err
	}
	sort.Strings(files)
	var buf bytes.Buffer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return CertManagerRelease{}, err
		}
		buf.WriteString("---\n")
		buf.Write(bytes.TrimPrefix(b, []byte("---\n")))
		if !bytes.HasSuffix(b, []byte("\n")) {
			buf.WriteByte('\n')
		}
	}
	objs, err := decodeYAML(buf.Bytes())
	if err != nil {
		return CertManagerRelease{}, fmt.Errorf("cert-manager %s deploy/crds: %w", version, err)
	}
	n := 0
	for _, o := range objs {
		if o.GroupVersionKind() != crdGVK {
			return CertManagerRelease{}, fmt.Errorf("cert-manager %s deploy/crds holds a %s", version, o.GetKind())
		}
		n++
	}
	if n == 0 {
		return CertManagerRelease{}, fmt.Errorf("cert-manager %s: no CRDs under deploy/crds of %s", version, dir)
	}
	return CertManagerRelease{Version: version, Components: buf.Bytes()}, nil
}

// goModuleDir downloads (or finds in the module cache) mod@version through the Go module
// proxy, outside this repository's module so neither go.mod nor go.sum changes.
func goModuleDir(ctx context.Context, mod, version string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod+"@"+version)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	var info struct {
		Dir   string
		Error string
	}
	if jerr := json.Unmarshal(out, &info); jerr != nil || err != nil || info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: %v %s", mod, version, err, info.Error)
	}
	return info.Dir, nil
}

// kustomizeBuild renders a kustomization directory as the providers' release targets do.
func kustomizeBuild(ctx context.Context, bin, dir string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, "build", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w\n%s", dir, err, stderr.String())
	}
	return out, nil
}

// buildInfoVersion reads the version hack/lab-binaries.sh recorded for a cached build.
func buildInfoVersion(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "BUILDINFO"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s/BUILDINFO has no version", dir)
}
