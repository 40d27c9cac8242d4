package proxmox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// storageFake adds storages and content to fakePVE.
type storageFake struct {
	*fakePVE
	mu       sync.Mutex
	version  string
	content  map[string]string // storage -> comma list
	volumes  map[string]uint64 // volid -> size
	download []map[string]string
	uploads  atomic.Int32
	// taskPolls is how long transfer tasks run.
	taskPolls int
}

func newStorageFake(t *testing.T) *storageFake {
	s := &storageFake{
		fakePVE: newFakePVE(t),
		version: "8.4.1",
		content: map[string]string{"local": "iso,import,vztmpl", "local-lvm": "images,rootdir"},
		volumes: map[string]uint64{},
	}
	s.handle("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"version": s.version, "release": "x"})
	})
	s.handle("GET /nodes/{node}/storage", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		var out []map[string]any
		for name, ct := range s.content {
			out = append(out, map[string]any{"storage": name, "type": "dir", "content": ct, "active": 1, "enabled": 1, "avail": 100 << 30, "total": 200 << 30, "used": 100 << 30})
		}
		writeJSON(w, out)
	})
	s.handle("GET /nodes/{node}/storage/{storage}/content", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		ct := r.URL.Query().Get("content")
		out := []map[string]any{}
		for volid, size := range s.volumes {
			st, rest, _ := strings.Cut(volid, ":")
			c, _, _ := strings.Cut(rest, "/")
			if st == r.PathValue("storage") && (ct == "" || c == ct) {
				out = append(out, map[string]any{"volid": volid, "content": c, "size": size, "format": "qcow2"})
			}
		}
		writeJSON(w, out)
	})
	s.handle("POST /nodes/{node}/storage/{storage}/download-url", func(w http.ResponseWriter, r *http.Request) {
		p := readParams(r)
		s.mu.Lock()
		s.download = append(s.download, p)
		s.mu.Unlock()
		volid := r.PathValue("storage") + ":" + p["content"] + "/" + p["filename"]
		writeJSON(w, s.newTask(r.PathValue("node"), "download", s.taskPolls, "OK", func() {
			s.mu.Lock()
			s.volumes[volid] = 1234
			s.mu.Unlock()
		}))
	})
	s.handle("DELETE /nodes/{node}/storage/{storage}/content/{volid...}", func(w http.ResponseWriter, r *http.Request) {
		volid := r.PathValue("volid")
		s.mu.Lock()
		_, ok := s.volumes[volid]
		delete(s.volumes, volid)
		s.mu.Unlock()
		if !ok {
			pveError(w, 500, "volume '"+volid+"' does not exist", nil)
			return
		}
		writeJSON(w, s.newTask(r.PathValue("node"), "imgdel", 0, "OK", nil))
	})
	return s
}

// handleUpload installs an upload handler; onChunk sees each file chunk as
// the server reads it.
func (s *storageFake) handleUpload(onChunk func(n int)) (got func() (map[string]string, []byte)) {
	var mu sync.Mutex
	fields := map[string]string{}
	var data []byte
	s.handle("POST /nodes/{node}/storage/{storage}/upload", func(w http.ResponseWriter, r *http.Request) {
		s.uploads.Add(1)
		mr, err := r.MultipartReader()
		if err != nil {
			pveError(w, 400, "bad multipart: "+err.Error(), nil)
			return
		}
		var filename string
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				pveError(w, 400, err.Error(), nil)
				return
			}
			if part.FormName() == "filename" {
				filename = part.FileName()
				buf := make([]byte, 32<<10)
				for {
					n, err := part.Read(buf)
					if n > 0 {
						mu.Lock()
						data = append(data, buf[:n]...)
						mu.Unlock()
						if onChunk != nil {
							onChunk(n)
						}
					}
					if err != nil {
						break
					}
				}
				continue
			}
			b, _ := io.ReadAll(part)
			mu.Lock()
			fields[part.FormName()] = string(b)
			mu.Unlock()
		}
		volid := r.PathValue("storage") + ":" + fields["content"] + "/" + filename
		size := uint64(len(data))
		writeJSON(w, s.newTask(r.PathValue("node"), "imgcopy", s.taskPolls, "OK", func() {
			s.mu.Lock()
			s.volumes[volid] = size
			s.mu.Unlock()
		}))
	})
	return func() (map[string]string, []byte) {
		mu.Lock()
		defer mu.Unlock()
		return fields, data
	}
}

const talosImage = "talos-ce4c9805-v1.13.9-nocloud-amd64.qcow2"

func TestEnsureImageDownload(t *testing.T) {
	g := NewWithT(t)
	s := newStorageFake(t)
	c := s.client()
	ctx := context.Background()
	req := ImageRequest{
		Node: "pve1", Storage: "local", Content: "import", Filename: talosImage,
		URL:      "https://factory.talos.dev/image/ce4c9805/v1.13.9/nocloud-amd64.qcow2",
		Checksum: strings.Repeat("ab", 32), ChecksumAlgorithm: "sha256",
	}
	res, err := c.EnsureImage(ctx, req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res).To(Equal(ImageResult{VolID: "local:import/" + talosImage, Transferred: true}))
	g.Expect(s.download).To(HaveLen(1))
	g.Expect(s.download[0]).To(Equal(map[string]string{
		"url": req.URL, "content": "import", "filename": talosImage,
		"checksum": req.Checksum, "checksum-algorithm": "sha256",
	}))

	// Present: one content listing, no transfer.
	before := s.count("GET /nodes/{node}/storage/{storage}/content")
	res, err = c.EnsureImage(ctx, req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Transferred).To(BeFalse())
	g.Expect(s.download).To(HaveLen(1))
	g.Expect(s.count("GET /nodes/{node}/storage/{storage}/content")).To(Equal(before + 1))
}

func TestEnsureImageRejections(t *testing.T) {
	base := ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: talosImage, URL: "https://factory.talos.dev/x.qcow2"}
	tests := []struct {
		name    string
		mod     func(*ImageRequest, *storageFake)
		want    error
		message string
	}{
		{"xz image", func(r *ImageRequest, _ *storageFake) { r.Filename = "talos.raw.xz" }, ErrInvalidConfig, "must match"},
		{"compression for import", func(r *ImageRequest, _ *storageFake) { r.Compression = "gz" }, ErrInvalidConfig, "only for iso content"},
		{"xz compression for iso", func(r *ImageRequest, _ *storageFake) {
			r.Content, r.Filename, r.Compression = "iso", "metal.iso", "xz"
		}, ErrInvalidConfig, "PVE has no xz"},
		{"bad checksum alg", func(r *ImageRequest, _ *storageFake) { r.Checksum, r.ChecksumAlgorithm = "ab", "crc32" }, ErrInvalidConfig, "checksum algorithm"},
		{"bad url", func(r *ImageRequest, _ *storageFake) { r.URL = "ftp://x/y.qcow2" }, ErrInvalidConfig, "download URL"},
		{"upload without source", func(r *ImageRequest, _ *storageFake) { r.URL = "" }, ErrInvalidConfig, "needs a Source"},
		{"PVE 8.3", func(_ *ImageRequest, s *storageFake) { s.version = "8.3.2" }, ErrUnsupported, "needs PVE >= 8.4"},
		{"storage without import", func(r *ImageRequest, _ *storageFake) { r.Storage = "local-lvm" }, ErrUnsupported, `add "import" to its content types`},
		{"unknown storage", func(r *ImageRequest, _ *storageFake) { r.Storage = "nas" }, ErrNotFound, "storage nas is not available on node pve1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			s := newStorageFake(t)
			r := base
			tt.mod(&r, s)
			_, err := s.client().EnsureImage(context.Background(), r)
			g.Expect(err).To(MatchError(tt.want))
			g.Expect(err).To(MatchError(ContainSubstring(tt.message)))
			g.Expect(s.download).To(BeEmpty())
		})
	}
}

func TestEnsureImageSingleFlight(t *testing.T) {
	g := NewWithT(t)
	s := newStorageFake(t)
	s.taskPolls = 5
	c := s.client()
	req := ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: talosImage, URL: "https://factory.talos.dev/x.qcow2"}
	const n = 20
	var wg sync.WaitGroup
	var transferred atomic.Int32
	start := make(chan struct{})
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := c.EnsureImage(context.Background(), req)
			if err != nil {
				errs <- err
				return
			}
			if res.VolID != "local:import/"+talosImage {
				errs <- io.ErrUnexpectedEOF
			}
			if res.Transferred {
				transferred.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(s.count("POST /nodes/{node}/storage/{storage}/download-url")).To(Equal(1), "N concurrent callers, one transfer")
	g.Expect(transferred.Load()).To(BeNumerically(">=", 1))

	// A different file is a different flight.
	req.Filename = "talos-other-nocloud-amd64.qcow2"
	_, err := c.EnsureImage(context.Background(), req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.count("POST /nodes/{node}/storage/{storage}/download-url")).To(Equal(2))
}

func TestEnsureImageCallerCancelDoesNotAbortFlight(t *testing.T) {
	g := NewWithT(t)
	s := newStorageFake(t)
	s.taskPolls = 20
	c := s.client()
	req := ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: talosImage, URL: "https://factory.talos.dev/x.qcow2"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	_, err := c.EnsureImage(ctx, req)
	g.Expect(err).To(MatchError(context.DeadlineExceeded))
	// A second caller joins (or follows) the still-running flight.
	res, err := c.EnsureImage(context.Background(), req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.VolID).To(Equal("local:import/" + talosImage))
	g.Expect(s.count("POST /nodes/{node}/storage/{storage}/download-url")).To(Equal(1))
}

// gatedReader yields chunk after chunk, each only after the server confirmed
// it received the previous one. A client that buffered the whole body before
// sending would deadlock here.
type gatedReader struct {
	chunks   int
	size     int
	sent     int
	received chan struct{}
	hash     io.Writer
}

func (r *gatedReader) Read(p []byte) (int, error) {
	if r.sent == r.chunks {
		return 0, io.EOF
	}
	if r.sent > 0 {
		select {
		case <-r.received:
		case <-time.After(5 * time.Second):
			return 0, io.ErrNoProgress
		}
	}
	n := min(len(p), r.size)
	for i := range n {
		p[i] = byte('a' + r.sent%26)
		_ = i
	}
	r.hash.Write(p[:n])
	r.sent++
	return n, nil
}

func TestEnsureImageUploadStreams(t *testing.T) {
	g := NewWithT(t)
	s := newStorageFake(t)
	const chunk, chunks = 16 << 10, 64 // 1 MiB in gated 16 KiB chunks
	received := make(chan struct{}, chunks)
	var got int
	var gotMu sync.Mutex
	fields := s.handleUpload(func(n int) {
		gotMu.Lock()
		defer gotMu.Unlock()
		// Signal once per full chunk received.
		before := got / chunk
		got += n
		for i := before; i < got/chunk; i++ {
			received <- struct{}{}
		}
	})
	c := s.client()
	h := sha256.New()
	src := &gatedReader{chunks: chunks, size: chunk, received: received, hash: h}
	opened := 0
	req := ImageRequest{
		Node: "pve1", Storage: "local", Content: "import", Filename: talosImage,
		Source: func(ctx context.Context) (io.ReadCloser, int64, error) {
			opened++
			return io.NopCloser(src), chunk * chunks, nil
		},
		Checksum: "deadbeef", ChecksumAlgorithm: "sha256",
	}
	res, err := c.EnsureImage(context.Background(), req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res).To(Equal(ImageResult{VolID: "local:import/" + talosImage, Transferred: true}))
	f, data := fields()
	g.Expect(f).To(Equal(map[string]string{"content": "import", "checksum": "deadbeef", "checksum-algorithm": "sha256"}))
	g.Expect(data).To(HaveLen(chunk * chunks))
	sum := sha256.Sum256(data)
	g.Expect(hex.EncodeToString(sum[:])).To(Equal(hex.EncodeToString(h.Sum(nil))))
	g.Expect(opened).To(Equal(1))

	// Present now: no second upload, source not opened.
	_, err = c.EnsureImage(context.Background(), req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(opened).To(Equal(1))
	g.Expect(s.uploads.Load()).To(Equal(int32(1)))
}

func TestUploadISOAndDeleteVolume(t *testing.T) {
	g := NewWithT(t)
	s := newStorageFake(t)
	fields := s.handleUpload(nil)
	c := s.client()
	ctx := context.Background()
	iso := []byte(strings.Repeat("x", 4096))

	volid, err := c.UploadISO(ctx, "pve1", "local", "capi-cp-1-cidata.iso", iso)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(volid).To(Equal("local:iso/capi-cp-1-cidata.iso"))
	f, data := fields()
	g.Expect(f).To(HaveKeyWithValue("content", "iso"))
	g.Expect(data).To(Equal(iso))

	// Again, with other content: uploaded over the old file (PVE's upload overwrites),
	// without listing the storage or deleting first.
	_, err = c.UploadISO(ctx, "pve1", "local", "capi-cp-1-cidata.iso", append(iso, 'y'))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.uploads.Load()).To(Equal(int32(2)))
	g.Expect(s.count("DELETE /nodes/{node}/storage/{storage}/content/{volid...}")).To(Equal(0))
	g.Expect(s.count("GET /nodes/{node}/storage/{storage}/content")).To(Equal(0))

	g.Expect(c.DeleteVolume(ctx, "pve1", volid)).To(Succeed())
	g.Expect(c.DeleteVolume(ctx, "pve1", volid)).To(Succeed(), "missing volume is success")
	g.Expect(c.DeleteVolume(ctx, "pve1", "no-colon")).To(MatchError(ErrInvalidConfig))

	_, err = c.UploadISO(ctx, "pve1", "local", "bad name.iso", iso)
	g.Expect(err).To(MatchError(ErrInvalidConfig))

	sts, err := c.Storages(ctx, "pve1")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(sts).To(HaveLen(2))
	g.Expect(sts[0].Name).To(Equal("local"))
	g.Expect(sts[0].Supports("import")).To(BeTrue())
	g.Expect(sts[1].Supports("import")).To(BeFalse())
	g.Expect(sts[0].Available).To(Equal(uint64(100 << 30)))
}

// TestStartImageDoesNotWait: StartImage returns at once while the transfer runs in the
// background, callers share the transfer, and a later call reports its outcome.
func TestStartImageDoesNotWait(t *testing.T) {
	g := NewWithT(t)
	s := newStorageFake(t)
	s.taskPolls = 30
	c := s.client()
	req := ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: talosImage, URL: "https://factory.talos.dev/x.qcow2"}
	for range 3 {
		start := time.Now()
		_, err := c.StartImage(context.Background(), req)
		g.Expect(err).To(MatchError(ErrInProgress))
		g.Expect(time.Since(start)).To(BeNumerically("<", time.Second))
	}
	var res ImageResult
	g.Eventually(func() error {
		var err error
		res, err = c.StartImage(context.Background(), req)
		return err
	}, 10*time.Second, 5*time.Millisecond).Should(Succeed())
	g.Expect(res).To(Equal(ImageResult{VolID: "local:import/" + talosImage, Transferred: true}))
	g.Expect(s.count("POST /nodes/{node}/storage/{storage}/download-url")).To(Equal(1), "one transfer for every caller")

	res, err := c.StartImage(context.Background(), req)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Transferred).To(BeFalse(), "present: nothing transferred")
}
