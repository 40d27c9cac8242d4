package release

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/gomega"
)

// TestImageArchive builds the image the way `make image` does and inspects the archive as
// its consumers read it: the OCI index (containerd import, i.e. `kind load image-archive`,
// and Docker 25+ `docker load`), manifest.json (`docker load` of older engines and
// `crane push <tar>`), and a push of both into a registry. The binary inside must run.
func TestImageArchive(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: building the manager for two platforms takes minutes")
	}
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	created := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	o := ImageOptions{
		Options: Options{RepoRoot: repoRoot(t), Version: "v0.2.0"},
		Commit:  "0123456789abcdef0123456789abcdef01234567",
		Created: created,
	}
	layoutDir, tarPath := filepath.Join(tmp, "image"), filepath.Join(tmp, "image.oci.tar")
	start := time.Now()
	_, err := BuildImage(ctx, o, layoutDir, tarPath)
	g.Expect(err).NotTo(HaveOccurred())
	fi, err := os.Stat(tarPath)
	g.Expect(err).NotTo(HaveOccurred())
	t.Logf("built %s (%d MiB) in %s", tarPath, fi.Size()>>20, time.Since(start).Round(time.Second))

	// Read the archive, not the directory it came from.
	extracted := filepath.Join(tmp, "extracted")
	names := untar(t, tarPath, extracted)
	g.Expect(names).To(ContainElements("oci-layout", "index.json", "manifest.json"))

	p, err := layout.FromPath(extracted)
	g.Expect(err).NotTo(HaveOccurred())
	top, err := p.ImageIndex()
	g.Expect(err).NotTo(HaveOccurred())
	topM, err := top.IndexManifest()
	g.Expect(err).NotTo(HaveOccurred())
	// One entry, an index: `crane push <layout dir>` then pushes the multi-arch index.
	g.Expect(topM.Manifests).To(HaveLen(1))
	g.Expect(topM.Manifests[0].MediaType.IsIndex()).To(BeTrue())
	g.Expect(topM.Manifests[0].Annotations).To(HaveKeyWithValue("io.containerd.image.name", DefaultImageRepository+":v0.2.0"))
	g.Expect(topM.Manifests[0].Annotations).To(HaveKeyWithValue("org.opencontainers.image.ref.name", "v0.2.0"))
	idx, err := top.ImageIndex(topM.Manifests[0].Digest)
	g.Expect(err).NotTo(HaveOccurred())
	im, err := idx.IndexManifest()
	g.Expect(err).NotTo(HaveOccurred())
	var platforms []string
	images := map[string]v1.Image{}
	for _, d := range im.Manifests {
		g.Expect(d.Platform).NotTo(BeNil())
		platforms = append(platforms, d.Platform.String())
		img, err := idx.Image(d.Digest)
		g.Expect(err).NotTo(HaveOccurred())
		images[d.Platform.Architecture] = img

		cf, err := img.ConfigFile()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(cf.OS).To(Equal("linux"))
		g.Expect(cf.Architecture).To(Equal(d.Platform.Architecture))
		g.Expect(cf.Config.User).To(Equal("65532:65532"))
		g.Expect(cf.Config.Entrypoint).To(Equal([]string{"/manager"}))
		g.Expect(cf.Config.Labels).To(And(
			HaveKeyWithValue("org.opencontainers.image.version", "v0.2.0"),
			HaveKeyWithValue("org.opencontainers.image.revision", o.Commit),
			HaveKeyWithValue("org.opencontainers.image.source", SourceURL),
			HaveKeyWithValue("org.opencontainers.image.title", "cluster-api-provider-proxmox-talos"),
			HaveKeyWithValue("org.opencontainers.image.created", "2026-11-30T12:00:00Z"),
		))
		g.Expect(cf.Created.Time.Equal(created)).To(BeTrue())

		files := flatten(t, img)
		g.Expect(files).To(HaveKey("manager"))
		g.Expect(files["manager"].Mode & 0o111).NotTo(BeZero())
		g.Expect(string(files["etc/passwd"].data)).To(ContainSubstring("nonroot:x:65532:65532:"))
		g.Expect(string(files["etc/ssl/certs/ca-certificates.crt"].data)).To(ContainSubstring("-----BEGIN CERTIFICATE-----"))
		g.Expect(files).To(HaveKey("tmp/"))
	}
	g.Expect(platforms).To(ConsistOf("linux/amd64", "linux/arm64/v8"))

	// The binary for this machine runs and reports the stamped version.
	host := flatten(t, images[runtime.GOARCH])
	bin := filepath.Join(tmp, "manager")
	g.Expect(os.WriteFile(bin, host["manager"].data, 0o755)).To(Succeed())
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	g.Expect(strings.TrimSpace(string(out))).To(Equal("cluster-api-provider-proxmox-talos-manager v0.2.0 (commit " + o.Commit + ")"))

	// manifest.json: what `docker load` (classic image store) and `crane push <tar>` read.
	loaded, err := crane.Load(tarPath)
	g.Expect(err).NotTo(HaveOccurred())
	lcf, err := loaded.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(lcf.Architecture).To(Equal("amd64"))
	wantCfg, _ := images["amd64"].ConfigName()
	gotCfg, _ := loaded.ConfigName()
	g.Expect(gotCfg).To(Equal(wantCfg))

	// Push both ways into a registry on loopback and read them back.
	reg := httptest.NewServer(registry.New(registry.Logger(nil)))
	defer reg.Close()
	host127 := strings.TrimPrefix(reg.URL, "http://")
	g.Expect(crane.Push(loaded, host127+"/single:v0.2.0")).To(Succeed())
	g.Expect(remote.WriteIndex(mustRef(t, host127+"/multi:v0.2.0"), idx)).To(Succeed())
	pulled, err := remote.Index(mustRef(t, host127+"/multi:v0.2.0"))
	g.Expect(err).NotTo(HaveOccurred())
	pm, err := pulled.IndexManifest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pm.Manifests).To(HaveLen(2))

	// Reproducible: the same commit and time give the same archive, byte for byte.
	again := filepath.Join(tmp, "again.oci.tar")
	_, err = BuildImage(ctx, o, filepath.Join(tmp, "again"), again)
	g.Expect(err).NotTo(HaveOccurred())
	a, err := os.ReadFile(tarPath)
	g.Expect(err).NotTo(HaveOccurred())
	b, err := os.ReadFile(again)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bytes.Equal(a, b)).To(BeTrue(), "two builds of the same commit differ")
}

type file struct {
	Mode int64
	data []byte
}

// flatten returns the image's filesystem (later layers win), as a container runtime sees it.
func flatten(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]file{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = file{Mode: h.Mode, data: b}
	}
}

func untar(t *testing.T, path, dir string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		target := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(target, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
