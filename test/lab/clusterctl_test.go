package lab

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	clusterctlv1 "sigs.k8s.io/cluster-api/cmd/clusterctl/api/v1alpha3"
	clusterctlconfig "sigs.k8s.io/cluster-api/cmd/clusterctl/client/config"
	"sigs.k8s.io/cluster-api/cmd/clusterctl/client/repository"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// fakeComponents is the smallest components file clusterctl accepts: one Namespace (its
// target namespace) and one CRD.
func fakeComponents(ns, group, kind string) []byte {
	plural := strings.ToLower(kind) + "s"
	return []byte(`apiVersion: v1
kind: Namespace
metadata:
  name: ` + ns + `
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ` + plural + `.` + group + `
spec:
  group: ` + group + `
  names: {kind: ` + kind + `, plural: ` + plural + `}
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object}}
`)
}

func metadataFor(major, minor int, contract string) []byte {
	return []byte("apiVersion: clusterctl.cluster.x-k8s.io/v1alpha3\nkind: Metadata\nreleaseSeries:\n" +
		"- major: " + strconv.Itoa(major) + "\n  minor: " + strconv.Itoa(minor) + "\n  contract: " + contract + "\n")
}

func labProviders() []RepoProvider {
	return []RepoProvider{
		{Name: "cluster-api", Type: clusterctlv1.CoreProviderType, Version: "v1.14.2", ComponentsFile: "core-components.yaml",
			Components: fakeComponents("capi-system", "cluster.x-k8s.io", "Cluster"), Metadata: metadataFor(1, 4, "v1beta2")},
		{Name: "talos", Type: clusterctlv1.BootstrapProviderType, Version: "v0.6.12", ComponentsFile: "bootstrap-components.yaml",
			Components: fakeComponents("cabpt-system", "bootstrap.cluster.x-k8s.io", "TalosConfig"), Metadata: metadataFor(0, 6, "v1beta1")},
		{Name: "talos", Type: clusterctlv1.ControlPlaneProviderType, Version: "v0.5.13", ComponentsFile: "control-plane-components.yaml",
			Components: fakeComponents("cacppt-system", "controlplane.cluster.x-k8s.io", "TalosControlPlane"), Metadata: metadataFor(0, 5, "v1beta1")},
		{Name: "proxmox-talos", Type: clusterctlv1.InfrastructureProviderType, Version: "v0.1.0", ComponentsFile: "infrastructure-components.yaml",
			Components: fakeComponents("proxmox-talos-system", "infrastructure.cluster.x-k8s.io", "ProxmoxTalosCluster"), Metadata: metadataFor(0, 1, "v1beta2"),
			Files: map[string][]byte{"cluster-template.yaml": []byte("kind: Cluster\n")}},
	}
}

// TestClusterctlRepoReadByClusterctl lays out a repository and reads it back with
// clusterctl's own config and repository clients (the code `clusterctl init` runs): every
// built-in provider name resolves to the lab's file:// repository, each release's versions,
// metadata and components are found, and cert-manager comes from the lab's file at the
// configured version.
func TestClusterctlRepoReadByClusterctl(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	providers := labProviders()
	repo, err := WriteClusterctlRepo(t.TempDir(), providers, CertManagerRelease{Version: "v1.21.1", Components: fakeComponents("cert-manager", "cert-manager.io", "Issuer")})
	g.Expect(err).NotTo(HaveOccurred())

	cfg, err := clusterctlconfig.New(ctx, repo.ConfigPath)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Variables().Get("CLUSTERCTL_DISABLE_VERSIONCHECK")).To(Equal("true"))

	for _, p := range providers {
		got, err := cfg.Providers().Get(p.Name, p.Type)
		g.Expect(err).NotTo(HaveOccurred(), p.ManifestLabel())
		wantURL := "file://" + filepath.Join(repo.Root, p.ManifestLabel(), p.Version, p.ComponentsFile)
		g.Expect(got.URL()).To(Equal(wantURL), "%s must override clusterctl's built-in URL", p.ManifestLabel())

		rc, err := repository.New(ctx, got, cfg)
		g.Expect(err).NotTo(HaveOccurred(), p.ManifestLabel())
		g.Expect(rc.DefaultVersion()).To(Equal(p.Version))
		versions, err := rc.GetVersions(ctx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(versions).To(ConsistOf(p.Version), p.ManifestLabel())
		md, err := rc.Metadata(p.Version).Get(ctx)
		g.Expect(err).NotTo(HaveOccurred(), p.ManifestLabel())
		g.Expect(md.ReleaseSeries).To(HaveLen(1))
		comps, err := rc.Components().Get(ctx, repository.ComponentsOptions{Version: p.Version})
		g.Expect(err).NotTo(HaveOccurred(), p.ManifestLabel())
		g.Expect(comps.ManifestLabel()).To(Equal(p.ManifestLabel()))
		g.Expect(comps.Objs()).To(HaveLen(2))
		for _, o := range comps.Objs() {
			// What the lab's wiring and `clusterctl delete` select on.
			g.Expect(o.GetLabels()).To(HaveKeyWithValue(clusterv1.ProviderNameLabel, p.ManifestLabel()))
			g.Expect(o.GetLabels()).To(HaveKey(clusterctlv1.ClusterctlLabel))
		}
		for name, b := range p.Files {
			got, err := os.ReadFile(filepath.Join(repo.Root, p.ManifestLabel(), p.Version, name))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(b))
		}
	}

	cm, err := cfg.CertManager().Get()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cm.Version()).To(Equal("v1.21.1"))
	g.Expect(cm.URL()).To(Equal("file://" + filepath.Join(repo.Root, "cert-manager", "v1.21.1", "cert-manager.yaml")))
	// clusterctl reads cert-manager through the same machinery, as a provider named
	// cert-manager without a type.
	rc, err := repository.New(ctx, clusterctlconfig.NewProvider("cert-manager", cm.URL(), ""), cfg)
	g.Expect(err).NotTo(HaveOccurred())
	raw, err := rc.Components().Raw(ctx, repository.ComponentsOptions{Version: cm.Version()})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(raw)).To(ContainSubstring("issuers.cert-manager.io"))
}

func TestRenderClusterctlConfigRefuses(t *testing.T) {
	for _, tc := range []struct {
		name      string
		root      string
		providers []RepoProvider
		want      string
	}{
		{name: "relative root", root: "repo", want: "absolute"},
		{name: "provider without version", root: "/repo",
			providers: []RepoProvider{{Name: "talos", Type: clusterctlv1.BootstrapProviderType, ComponentsFile: "b.yaml"}}, want: "required"},
		{name: "provider without components file", root: "/repo",
			providers: []RepoProvider{{Name: "talos", Type: clusterctlv1.BootstrapProviderType, Version: "v0.6.12"}}, want: "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			_, err := RenderClusterctlConfig(tc.root, tc.providers, "v1.21.1")
			g.Expect(err).To(MatchError(ContainSubstring(tc.want)))
		})
	}
}

func TestWriteClusterctlRepoNeedsComponentsAndMetadata(t *testing.T) {
	g := NewWithT(t)
	p := labProviders()[3]
	p.Metadata = nil
	_, err := WriteClusterctlRepo(t.TempDir(), []RepoProvider{p}, CertManagerRelease{Version: "v1.21.1", Components: []byte("{}")})
	g.Expect(err).To(MatchError(ContainSubstring("metadata.yaml")))
}

func TestLatestReleaseVersion(t *testing.T) {
	for _, tc := range []struct {
		name, metadata, want, err string
	}{
		{name: "one series", metadata: string(metadataFor(0, 1, "v1beta2")), want: "v0.1.0"},
		{name: "newest of several, in any order", want: "v1.2.0", metadata: `releaseSeries:
- {major: 0, minor: 9, contract: v1beta1}
- {major: 1, minor: 2, contract: v1beta2}
- {major: 1, minor: 0, contract: v1beta1}
`},
		{name: "no series", metadata: "releaseSeries: []\n", err: "no releaseSeries"},
		{name: "not yaml", metadata: "releaseSeries: {", err: "metadata.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := LatestReleaseVersion([]byte(tc.metadata))
			if tc.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.err)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

// TestRepositoryMetadataHasARelease: the lab publishes this tree as the newest release
// series of the repository's metadata.yaml.
func TestRepositoryMetadataHasARelease(t *testing.T) {
	g := NewWithT(t)
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "metadata.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	v, err := LatestReleaseVersion(b)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v).To(MatchRegexp(`^v\d+\.\d+\.0$`))
}

// TestCertManagerCRDsFromModule: the cert-manager module at clusterctl's default version
// ships the CRDs clusterctl's readiness check creates objects of (Issuer, Certificate).
func TestCertManagerCRDsFromModule(t *testing.T) {
	g := NewWithT(t)
	cm, err := certManagerCRDs(context.Background(), clusterctlconfig.CertManagerDefaultVersion)
	g.Expect(err).NotTo(HaveOccurred())
	objs, err := decodeYAML(cm.Components)
	g.Expect(err).NotTo(HaveOccurred())
	var names []string
	for _, o := range objs {
		names = append(names, o.GetName())
	}
	g.Expect(names).To(ContainElements("issuers.cert-manager.io", "certificates.cert-manager.io"))
}

// TestOurReleaseIsClusterctlInstallable: what `make release` writes is read by
// clusterctl's components client as `clusterctl init --infrastructure proxmox-talos` reads
// it: every variable has a default, exactly one target namespace, every object labelled.
func TestOurReleaseIsClusterctlInstallable(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	tmp := t.TempDir()
	ours, err := ourRelease(ctx, filepath.Join(tmp, "out"), "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ours.Files).To(HaveKey("cluster-template.yaml"))
	g.Expect(ours.Files).To(HaveKey("clusterclass-proxmox-talos.yaml"))
	repo, err := WriteClusterctlRepo(filepath.Join(tmp, "repo"), []RepoProvider{ours}, CertManagerRelease{Version: "v1.21.1", Components: []byte("{}")})
	g.Expect(err).NotTo(HaveOccurred())
	cfg, err := clusterctlconfig.New(ctx, repo.ConfigPath)
	g.Expect(err).NotTo(HaveOccurred())
	p, err := cfg.Providers().Get("proxmox-talos", clusterctlv1.InfrastructureProviderType)
	g.Expect(err).NotTo(HaveOccurred())
	rc, err := repository.New(ctx, p, cfg)
	g.Expect(err).NotTo(HaveOccurred())
	comps, err := rc.Components().Get(ctx, repository.ComponentsOptions{Version: ours.Version})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(comps.TargetNamespace()).NotTo(BeEmpty())
	kinds := map[string]int{}
	for _, o := range comps.Objs() {
		kinds[o.GetKind()]++
		g.Expect(o.GetLabels()).To(HaveKeyWithValue(clusterv1.ProviderNameLabel, "infrastructure-proxmox-talos"), "%s %s", o.GetKind(), o.GetName())
	}
	g.Expect(kinds).To(HaveKeyWithValue("Deployment", 1))
	g.Expect(kinds).To(HaveKeyWithValue("CustomResourceDefinition", 4))
}
