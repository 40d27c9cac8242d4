package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func decodeAll(t *testing.T, raw []byte) []unstructured.Unstructured {
	t.Helper()
	var objs []unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("decoding: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// TestWriteAssets: `make release VERSION=v0.2.0` writes every asset clusterctl and users need,
// with the image pinned by kustomize and the clusterctl variables untouched, and writes the
// same bytes twice.
func TestWriteAssets(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root := repoRoot(t)
	o := Options{RepoRoot: root, Version: "v0.2.0"}
	a, b := t.TempDir(), t.TempDir()
	start := time.Now()
	g.Expect(WriteAssets(ctx, o, a)).To(Succeed())
	t.Logf("assets written in %s", time.Since(start).Round(time.Millisecond))
	g.Expect(WriteAssets(ctx, o, b)).To(Succeed())

	names, err := Assets(root)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(names).To(ContainElements(ComponentsFile, MetadataFile, "cluster-template.yaml", "cluster-template-metal.yaml",
		"cluster-template-talos-vip.yaml", "cluster-template-topology.yaml", "clusterclass-proxmox-talos.yaml", TalosControlPlaneTemplateCRDFile))
	entries, err := os.ReadDir(a)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(entries).To(HaveLen(len(names)), "nothing but the assets")
	for _, n := range names {
		x, err := os.ReadFile(filepath.Join(a, n))
		g.Expect(err).NotTo(HaveOccurred(), n)
		y, err := os.ReadFile(filepath.Join(b, n))
		g.Expect(err).NotTo(HaveOccurred(), n)
		g.Expect(bytes.Equal(x, y)).To(BeTrue(), "%s differs between two runs", n)
		g.Expect(x).NotTo(BeEmpty(), n)
	}
	for _, n := range names[2:] {
		src := filepath.Join(root, "templates", n)
		if n == TalosControlPlaneTemplateCRDFile {
			src = filepath.Join(root, "config", "optional", "taloscontrolplanetemplate", "controlplane.cluster.x-k8s.io_taloscontrolplanetemplates.yaml")
		}
		want, err := os.ReadFile(src)
		g.Expect(err).NotTo(HaveOccurred())
		got, _ := os.ReadFile(filepath.Join(a, n))
		g.Expect(got).To(Equal(want), "%s is shipped as in the repository", n)
	}

	raw, err := os.ReadFile(filepath.Join(a, ComponentsFile))
	g.Expect(err).NotTo(HaveOccurred())
	var images []string
	for _, obj := range decodeAll(t, raw) {
		if obj.GetKind() != "Deployment" {
			continue
		}
		cs, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			images = append(images, c.(map[string]any)["image"].(string))
		}
	}
	g.Expect(images).To(Equal([]string{DefaultImageRepository + ":v0.2.0"}))
	g.Expect(string(raw)).To(ContainSubstring("${PROXMOX_TALOS_API_QPS:=50}"), "clusterctl variables stay for clusterctl")
	g.Expect(string(raw)).To(ContainSubstring("${PROXMOX_TALOS_DIAGNOSTICS_ADDRESS:=:8443}"))

	crds := decodeAll(t, mustRead(t, filepath.Join(a, TalosControlPlaneTemplateCRDFile)))
	g.Expect(crds).To(HaveLen(1))
	g.Expect(crds[0].GetName()).To(Equal("taloscontrolplanetemplates.controlplane.cluster.x-k8s.io"))
	g.Expect(string(raw)).NotTo(ContainSubstring("taloscontrolplanetemplates"), "the optional CRD is not in the components")

	// The repository layout clusterctl reads.
	repo := t.TempDir()
	p, err := WriteClusterctlRepository(ctx, Options{RepoRoot: root, Version: "v0.2.0", Image: "example.test/manager@sha256:" + strings.Repeat("a", 64)}, repo)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(p).To(Equal(filepath.Join(repo, "infrastructure-proxmox-talos", "v0.2.0", "infrastructure-components.yaml")))
	g.Expect(string(mustRead(t, p))).To(ContainSubstring("image: example.test/manager@sha256:" + strings.Repeat("a", 64) + "\n"))
}

func TestWriteAssetsRejects(t *testing.T) {
	ctx := context.Background()
	root := repoRoot(t)
	for _, tc := range []struct {
		version, want string
	}{
		{"0.2.0", "not a semantic version"},
		{"v0.2", "not a semantic version"},
		{"v9.7.0", "no release series 9.7"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			g := NewWithT(t)
			dir := t.TempDir()
			err := WriteAssets(ctx, Options{RepoRoot: root, Version: tc.version}, dir)
			g.Expect(err).To(MatchError(ContainSubstring(tc.want)))
			entries, _ := os.ReadDir(dir)
			g.Expect(entries).To(BeEmpty(), "nothing written for a rejected version")
		})
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// clusterctlPath finds the clusterctl hack/lab-binaries.sh caches (never building it).
// Without it the test skips, except under CI, where it fails.
func clusterctlPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv("CLUSTERCTL")
	if path == "" {
		out, err := exec.Command("bash", filepath.Join(repoRoot(t), "hack", "lab-binaries.sh"), "--dir", "clusterctl").Output()
		if err != nil {
			t.Fatalf("hack/lab-binaries.sh --dir clusterctl: %v", err)
		}
		path = filepath.Join(strings.TrimSpace(string(out)), "clusterctl")
	}
	if fi, err := os.Stat(path); err != nil || fi.IsDir() {
		msg := fmt.Sprintf("clusterctl not found at %s: run hack/lab-binaries.sh (or set CLUSTERCTL)", path)
		testenv.SkipOrFail(t, "%s", msg)
	}
	return path
}

// TestClusterctlGenerateProvider runs the real clusterctl against the release: `generate
// provider --describe` parses every image (it failed on a ${VAR} image), and clusterctl's
// `images:` configuration overrides the manager image.
func TestClusterctlGenerateProvider(t *testing.T) {
	clusterctl := clusterctlPath(t)
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	components, err := WriteClusterctlRepository(ctx, Options{RepoRoot: repoRoot(t), Version: "v0.2.0"}, filepath.Join(tmp, "repo"))
	g.Expect(err).NotTo(HaveOccurred())
	cfg := filepath.Join(tmp, "clusterctl.yaml")
	g.Expect(os.WriteFile(cfg, []byte(fmt.Sprintf(`CLUSTERCTL_DISABLE_VERSIONCHECK: "true"
providers:
- name: proxmox-talos
  type: InfrastructureProvider
  url: file://%s
images:
  infrastructure-proxmox-talos:
    repository: registry.example.test/mirror
`, components)), 0o644)).To(Succeed())
	run := func(args ...string) string {
		cmd := exec.CommandContext(ctx, clusterctl, append(args, "--config", cfg)...)
		cmd.Env = append(os.Environ(), "HOME="+tmp, "XDG_CONFIG_HOME="+filepath.Join(tmp, "xdg"))
		out, err := cmd.CombinedOutput()
		g.Expect(err).NotTo(HaveOccurred(), "clusterctl %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}
	desc := run("generate", "provider", "--infrastructure", "proxmox-talos:v0.2.0", "--describe")
	g.Expect(desc).To(ContainSubstring("capi-proxmox-talos-system"))
	g.Expect(desc).To(ContainSubstring("PROXMOX_TALOS_API_QPS"))
	yaml := run("generate", "provider", "--infrastructure", "proxmox-talos:v0.2.0")
	g.Expect(yaml).To(ContainSubstring("image: registry.example.test/mirror/cluster-api-provider-proxmox-talos:v0.2.0\n"))
	g.Expect(yaml).To(ContainSubstring("--proxmox-qps=50"), "clusterctl substituted the variable's default")
}
