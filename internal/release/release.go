// Package release builds what a release of the provider ships: the clusterctl assets
// (infrastructure-components.yaml with the image pinned, metadata.yaml, the flavors, the
// ClusterClass and the optional TalosControlPlaneTemplate CRD) and the manager's container
// image as a multi-arch OCI archive, built without a Docker engine.
//
// It is a library so that tests (and the lab, which runs `clusterctl init` from a local
// repository) produce exactly what `make release` and `make image` produce.
package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	clusterctlv1 "sigs.k8s.io/cluster-api/cmd/clusterctl/api/v1alpha3"
)

const (
	// ProviderName is the clusterctl provider name (type prefix + name).
	ProviderName = "infrastructure-proxmox-talos"
	// DefaultImageRepository is where the release workflow pushes the manager image.
	DefaultImageRepository = "ghcr.io/proxmox-talos/cluster-api-provider-proxmox-talos"
	// ComponentsFile is the components asset clusterctl reads.
	ComponentsFile = "infrastructure-components.yaml"
	// MetadataFile maps release series to contracts.
	MetadataFile = "metadata.yaml"
	// TalosControlPlaneTemplateCRDFile is the optional CRD the ClusterClass needs until
	// CACPPT ships its own; a separate asset so that it never conflicts with CACPPT.
	TalosControlPlaneTemplateCRDFile = "taloscontrolplanetemplate-crd.yaml"

	// imagePlaceholder is the plain reference config/manager carries; `kustomize edit set
	// image` replaces it.
	imagePlaceholder = DefaultImageRepository
)

var semverRE = regexp.MustCompile(`^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// Options select what a release contains.
type Options struct {
	// RepoRoot is the repository checkout (holds config/, templates/, metadata.yaml).
	RepoRoot string
	// Version is the release version, vX.Y.Z; metadata.yaml must have its release series.
	Version string
	// ImageRepository defaults to DefaultImageRepository; the image becomes
	// <ImageRepository>:<Version> unless Image is set.
	ImageRepository string
	// Image, when set, is the full image reference (e.g. a lab image by digest).
	Image string
	// Kustomize is the kustomize binary; empty builds the module's pinned go tool.
	Kustomize string
}

// ImageRef is the image the components reference.
func (o Options) ImageRef() string {
	if o.Image != "" {
		return o.Image
	}
	repo := o.ImageRepository
	if repo == "" {
		repo = DefaultImageRepository
	}
	return repo + ":" + o.Version
}

// Assets lists the files WriteAssets writes, in order.
func Assets(repoRoot string) ([]string, error) {
	flavors, err := filepath.Glob(filepath.Join(repoRoot, "templates", "cluster-template*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(flavors) == 0 {
		return nil, fmt.Errorf("no templates/cluster-template*.yaml under %s", repoRoot)
	}
	out := []string{ComponentsFile, MetadataFile}
	for _, f := range flavors {
		out = append(out, filepath.Base(f))
	}
	slices.Sort(out[2:])
	return append(out, "clusterclass-proxmox-talos.yaml", TalosControlPlaneTemplateCRDFile), nil
}

// WriteAssets writes every release asset into dir. The output depends only on the
// repository content and the options, so two runs produce identical bytes.
func WriteAssets(ctx context.Context, o Options, dir string) error {
	if !semverRE.MatchString(o.Version) {
		return fmt.Errorf("version %q is not a semantic version like v0.2.0", o.Version)
	}
	md, err := os.ReadFile(filepath.Join(o.RepoRoot, MetadataFile))
	if err != nil {
		return err
	}
	if err := checkReleaseSeries(md, o.Version); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	components, err := renderComponents(ctx, o)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ComponentsFile), components, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, MetadataFile), md, 0o644); err != nil {
		return err
	}
	assets, err := Assets(o.RepoRoot)
	if err != nil {
		return err
	}
	for _, name := range assets[2 : len(assets)-1] {
		if err := copyFile(filepath.Join(o.RepoRoot, "templates", name), filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return copyFile(filepath.Join(o.RepoRoot, "config", "optional", "taloscontrolplanetemplate",
		"controlplane.cluster.x-k8s.io_taloscontrolplanetemplates.yaml"),
		filepath.Join(dir, TalosControlPlaneTemplateCRDFile))
}

// WriteClusterctlRepository writes a local clusterctl repository for this provider:
// <root>/infrastructure-proxmox-talos/<version>/<assets>. Point clusterctl at it with a
// providers entry whose url is the returned components path (file://...).
func WriteClusterctlRepository(ctx context.Context, o Options, root string) (componentsPath string, err error) {
	dir := filepath.Join(root, ProviderName, o.Version)
	if err := WriteAssets(ctx, o, dir); err != nil {
		return "", err
	}
	return filepath.Join(dir, ComponentsFile), nil
}

// checkReleaseSeries fails when clusterctl would reject the version: metadata.yaml must
// have a release series for its major.minor.
func checkReleaseSeries(raw []byte, version string) error {
	var md clusterctlv1.Metadata
	if err := yaml.UnmarshalStrict(raw, &md); err != nil {
		return fmt.Errorf("metadata.yaml: %w", err)
	}
	m := semverRE.FindStringSubmatch(version)
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	for _, rs := range md.ReleaseSeries {
		if int(rs.Major) == major && int(rs.Minor) == minor {
			return nil
		}
	}
	return fmt.Errorf("metadata.yaml has no release series %d.%d for %s: add `- major: %d, minor: %d, contract: v1beta2` (clusterctl refuses a version without one)",
		major, minor, version, major, minor)
}

// renderComponents copies config/ to a scratch directory, pins the manager image there with
// `kustomize edit set image` and builds config/default.
func renderComponents(ctx context.Context, o Options) ([]byte, error) {
	kustomize := o.Kustomize
	if kustomize == "" {
		var err error
		if kustomize, err = KustomizeBinary(ctx, o.RepoRoot); err != nil {
			return nil, err
		}
	}
	tmp, err := os.MkdirTemp("", "release-config-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.CopyFS(filepath.Join(tmp, "config"), os.DirFS(filepath.Join(o.RepoRoot, "config"))); err != nil {
		return nil, fmt.Errorf("copying config/: %w", err)
	}
	// Go test files under config/ are not manifests; kustomize ignores them anyway.
	def := filepath.Join(tmp, "config", "default")
	if _, err := run(ctx, def, kustomize, "edit", "set", "image", imagePlaceholder+"="+o.ImageRef()); err != nil {
		return nil, err
	}
	out, err := run(ctx, def, kustomize, "build", ".")
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(out, []byte("image: "+o.ImageRef()+"\n")) {
		return nil, fmt.Errorf("kustomize did not set the manager image to %s (is config/manager's image still %s?)", o.ImageRef(), imagePlaceholder)
	}
	return out, nil
}

// KustomizeBinary builds (cached by the Go build cache) the kustomize pinned as a tool in
// go.mod and returns its path.
func KustomizeBinary(ctx context.Context, repoRoot string) (string, error) {
	out, err := run(ctx, repoRoot, "go", "tool", "-n", "kustomize")
	if err != nil {
		return "", fmt.Errorf("building the kustomize go tool: %w", err)
	}
	p := strings.TrimSpace(string(out))
	if p == "" {
		return "", errors.New("go tool -n kustomize printed no path")
	}
	return p, nil
}

func execCommand(ctx context.Context, dir, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	return cmd
}

func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := execCommand(ctx, dir, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
