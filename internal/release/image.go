package release

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// ImageUser is distroless' nonroot user; config/manager runs as it too.
	ImageUser = "65532:65532"
	// ImageEntrypoint is the manager binary's path in the image.
	ImageEntrypoint = "/manager"
	// OfflineBase names the base of `make image`: no base image, a root filesystem of our
	// own (CA bundle, passwd/group with nonroot, /tmp), so the build needs no registry.
	OfflineBase = "scratch"
	// ReleaseBase is the base the Dockerfile (and so the release workflow) uses.
	ReleaseBase = "gcr.io/distroless/static:nonroot"
	// SourceURL is the repository, for the org.opencontainers.image.source label.
	SourceURL = "https://github.com/proxmox-talos/cluster-api-provider-proxmox-talos"
	// DefaultCABundle is Debian's ca-certificates bundle on the build machine.
	DefaultCABundle = "/etc/ssl/certs/ca-certificates.crt"
)

// DefaultPlatforms are the platforms of the release image.
var DefaultPlatforms = []string{"linux/amd64", "linux/arm64"}

// ImageOptions select how BuildImage builds the manager image.
type ImageOptions struct {
	Options
	// Commit is stamped into the binary (main.gitCommit) and the revision label.
	Commit string
	// Platforms default to DefaultPlatforms.
	Platforms []string
	// CABundle is the PEM bundle installed as /etc/ssl/certs/ca-certificates.crt.
	CABundle string
	// Created is every timestamp in the image (SOURCE_DATE_EPOCH); fixed for reproducible
	// archives.
	Created time.Time
	// LoadPlatform is the platform the archive's manifest.json names, for `docker load`
	// of engines that read only manifest.json (one image per tag); default linux/amd64.
	// index.json always carries every platform.
	LoadPlatform string
	// GoBuildFlags are extra flags for go build (e.g. -p 1).
	GoBuildFlags []string
}

// BuildImage cross-compiles the manager for every platform, assembles one image per platform
// on an empty base and writes the multi-arch index as an OCI image layout in layoutDir and,
// when tarPath is set, as a tar of that layout with a Docker manifest.json (the format of
// `docker save` since Docker 25), which `docker load`, `kind load image-archive` (containerd
// import) and `crane push` read.
func BuildImage(ctx context.Context, o ImageOptions, layoutDir, tarPath string) (v1.ImageIndex, error) {
	if !semverRE.MatchString(o.Version) && o.Version != "dev" {
		return nil, fmt.Errorf("version %q is not a semantic version like v0.2.0", o.Version)
	}
	if len(o.Platforms) == 0 {
		o.Platforms = DefaultPlatforms
	}
	if o.CABundle == "" {
		o.CABundle = DefaultCABundle
	}
	if o.LoadPlatform == "" {
		o.LoadPlatform = "linux/amd64"
	}
	if o.Commit == "" {
		o.Commit = "unknown"
	}
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("reading the CA bundle (install Debian's ca-certificates or set CA_BUNDLE): %w", err)
	}
	if !bytes.Contains(ca, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, fmt.Errorf("%s holds no PEM certificate", o.CABundle)
	}
	base, err := layerFromTar(baseFiles(ca, o.Created))
	if err != nil {
		return nil, err
	}
	binDir, err := os.MkdirTemp("", "manager-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(binDir)

	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var loadImage v1.Image
	for _, p := range o.Platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", p, err)
		}
		if plat.OS != "linux" {
			return nil, fmt.Errorf("platform %q: the manager image is linux only", p)
		}
		if plat.Architecture == "arm64" && plat.Variant == "" {
			plat.Variant = "v8"
		}
		bin := filepath.Join(binDir, "manager-"+plat.Architecture)
		if err := goBuild(ctx, o, plat.Architecture, bin); err != nil {
			return nil, err
		}
		img, err := platformImage(o, *plat, base, bin)
		if err != nil {
			return nil, err
		}
		if p == o.LoadPlatform {
			loadImage = img
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	if loadImage == nil {
		return nil, fmt.Errorf("load platform %s is not among the platforms %v", o.LoadPlatform, o.Platforms)
	}
	if err := writeLayout(o, idx, loadImage, layoutDir); err != nil {
		return nil, err
	}
	if tarPath != "" {
		if err := tarDir(layoutDir, tarPath, o.Created); err != nil {
			return nil, err
		}
	}
	return idx, nil
}

// ImageLabels are the org.opencontainers.image.* labels of the image.
func ImageLabels(o ImageOptions) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "cluster-api-provider-proxmox-talos",
		"org.opencontainers.image.description": "Cluster API infrastructure provider: Talos Linux clusters on Proxmox VE",
		"org.opencontainers.image.source":      SourceURL,
		"org.opencontainers.image.url":         SourceURL,
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Commit,
		"org.opencontainers.image.created":     o.Created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.base.name":   OfflineBase,
	}
}

func goBuild(ctx context.Context, o ImageOptions, arch, out string) error {
	ldflags := fmt.Sprintf("-s -w -buildid= -X main.version=%s -X main.gitCommit=%s", o.Version, o.Commit)
	args := append([]string{"build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out}, o.GoBuildFlags...)
	args = append(args, ".")
	cmd := execCommand(ctx, o.RepoRoot, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build for linux/%s: %w\n%s", arch, err, b)
	}
	return nil
}

func platformImage(o ImageOptions, plat v1.Platform, base v1.Layer, bin string) (v1.Image, error) {
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	binLayer, err := layerFromTar([]tarEntry{{name: strings.TrimPrefix(ImageEntrypoint, "/"), mode: 0o755, data: b, mtime: o.Created}})
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: plat.Architecture,
		OS:           plat.OS,
		Variant:      plat.Variant,
		Created:      v1.Time{Time: o.Created},
		Config: v1.Config{
			User:       ImageUser,
			Entrypoint: []string{ImageEntrypoint},
			WorkingDir: "/",
			Env:        []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
			Labels:     ImageLabels(o),
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	return mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{Created: v1.Time{Time: o.Created}, CreatedBy: "make image: CA bundle, passwd/group (nonroot 65532), /tmp", Comment: "base " + OfflineBase}},
		mutate.Addendum{Layer: binLayer, History: v1.History{Created: v1.Time{Time: o.Created}, CreatedBy: "make image: go build -trimpath (CGO_ENABLED=0) -> /manager"}},
	)
}

type tarEntry struct {
	name     string
	mode     int64
	uid, gid int
	dir      bool
	data     []byte
	mtime    time.Time
}

// baseFiles is the root filesystem under the binary: what distroless/static:nonroot provides
// that the manager uses (TLS roots for Proxmox and the Image Factory, a passwd entry for
// the nonroot user, a writable /tmp for the webhook certificate mount point).
func baseFiles(ca []byte, t time.Time) []tarEntry {
	return []tarEntry{
		{name: "etc", mode: 0o755, dir: true, mtime: t},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n"), mtime: t},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"), mtime: t},
		{name: "etc/ssl", mode: 0o755, dir: true, mtime: t},
		{name: "etc/ssl/certs", mode: 0o755, dir: true, mtime: t},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca, mtime: t},
		{name: "home", mode: 0o755, dir: true, mtime: t},
		{name: "home/nonroot", mode: 0o700, uid: 65532, gid: 65532, dir: true, mtime: t},
		{name: "tmp", mode: 0o1777, dir: true, mtime: t},
	}
}

func layerFromTar(entries []tarEntry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: e.mtime, Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag, h.Name = tar.TypeDir, e.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// dockerManifest is one entry of `docker save`'s manifest.json.
type dockerManifest struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

func writeLayout(o ImageOptions, idx v1.ImageIndex, loadImage v1.Image, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	ref := o.ImageRef()
	// The annotations `docker save` writes: containerd (kind) names the image by the first,
	// OCI tools by the second.
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": ref[strings.LastIndex(ref, ":")+1:],
	})); err != nil {
		return err
	}
	cfg, err := loadImage.ConfigName()
	if err != nil {
		return err
	}
	layers, err := loadImage.Layers()
	if err != nil {
		return err
	}
	dm := dockerManifest{Config: "blobs/sha256/" + cfg.Hex, RepoTags: []string{ref}}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		dm.Layers = append(dm.Layers, "blobs/sha256/"+d.Hex)
	}
	b, err := json.Marshal([]dockerManifest{dm})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "manifest.json"), b, 0o644)
}

// tarDir writes dir as a tar with sorted entries and fixed times, so equal layouts give
// equal archives.
func tarDir(dir, out string, t time.Time) error {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(files)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(out), ".image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	tw := tar.NewWriter(f)
	for _, path := range files {
		rel, _ := filepath.Rel(dir, path)
		rel = filepath.ToSlash(rel)
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: rel, Mode: 0o644, ModTime: t, Format: tar.FormatPAX}
		if fi.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, rel+"/", 0o755
		} else {
			h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.IsDir() {
			src, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}
