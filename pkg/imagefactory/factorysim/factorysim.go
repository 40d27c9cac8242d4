// Package factorysim is an in-process Talos Image Factory simulator for tests and the lab.
//
// It implements the subset of the factory API this provider uses — POST /schematics,
// GET /schematics/{id}, GET|HEAD /image/{id}/{version}/{file}, GET /versions and
// GET /version/{v}/extensions/official — with the real factory's validation rules (strict
// schematic decoding, IDs from the same canonical YAML), small deterministic image payloads,
// per-path request/download counters, and fault injection (latency, forced or seeded-random
// 5xx) so clients can be tested against failures deterministically.
//
// It only ever listens on loopback addresses.
package factorysim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/image-factory/pkg/schematic"
)

// DefaultVersions are the Talos versions the simulator knows unless Options.Versions is set.
var DefaultVersions = []string{"v1.13.9", "v1.14.0", "v1.14.1"}

// DefaultExtensions are the official extension names listed for every version.
var DefaultExtensions = []string{
	"siderolabs/iscsi-tools",
	"siderolabs/qemu-guest-agent",
	"siderolabs/tailscale",
	"siderolabs/util-linux-tools",
}

// Options configures a Server.
type Options struct {
	// Versions known to the factory; default DefaultVersions.
	Versions []string
	// Extensions listed for every version; default DefaultExtensions.
	Extensions []string
	// Seed seeds the RNG used by Fault.ErrorRate, making random failures reproducible.
	Seed uint64
}

// Fault is injected into requests whose URL path starts with the registered prefix.
type Fault struct {
	// Latency delays the response (cut short if the client goes away).
	Latency time.Duration
	// FailFirst makes the next N matching requests fail with Status — the deterministic way to
	// test "fails twice, then succeeds".
	FailFirst int
	// ErrorRate (0..1) fails matching requests at random, drawn from the seeded RNG.
	ErrorRate float64
	// Status is the failure status code; default 503.
	Status int
}

type fault struct {
	Fault

	failed int
}

// Server is the simulator. Create it with New, then Start (or use Handler with httptest).
type Server struct {
	versions   []string
	extensions []string

	mu         sync.Mutex
	rng        *rand.Rand
	schematics map[string][]byte // id -> canonical YAML
	faults     map[string]*fault // path prefix -> fault
	requests   map[string]int    // "METHOD /path" -> count
	downloads  map[string]int    // path -> completed GET image downloads
	injected   int

	ln  net.Listener
	srv *http.Server
	mux *http.ServeMux
}

// New creates a simulator; it does not listen until Start.
func New(opts Options) *Server {
	s := &Server{
		versions:   slices.Clone(opts.Versions),
		extensions: slices.Clone(opts.Extensions),
		rng:        rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)), //nolint:gosec // test RNG
		schematics: map[string][]byte{},
		faults:     map[string]*fault{},
		requests:   map[string]int{},
		downloads:  map[string]int{},
	}

	if s.versions == nil {
		s.versions = slices.Clone(DefaultVersions)
	}

	if s.extensions == nil {
		s.extensions = slices.Clone(DefaultExtensions)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /schematics", s.createSchematic)
	mux.HandleFunc("GET /schematics/{id}", s.getSchematic)
	mux.HandleFunc("GET /image/{id}/{version}/{file}", s.image) // GET patterns also match HEAD
	mux.HandleFunc("GET /versions", s.listVersions)
	mux.HandleFunc("GET /version/{version}/extensions/official", s.listExtensions)
	s.mux = mux

	return s
}

// Handler returns the HTTP handler (with counting and fault injection), e.g. for httptest.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

// Start listens on 127.0.0.1 with a random port.
func (s *Server) Start() error { return s.StartOn("127.0.0.1:0") }

// StartOn listens on addr, which must be a loopback address ("127.0.0.1:8095", "[::1]:0",
// "localhost:0"); anything else is refused so the simulator can never be exposed.
func (s *Server) StartOn(addr string) error {
	if err := CheckLoopback(addr); err != nil {
		return err
	}

	if s.ln != nil {
		return errors.New("factorysim: already started")
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("factorysim: listen: %w", err)
	}

	s.ln = ln
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}

	go func() { _ = s.srv.Serve(ln) }()

	return nil
}

// CheckLoopback returns an error unless addr ("host:port") names a loopback host.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("factorysim: listen address %q: %w", addr, err)
	}

	if host == "localhost" {
		return nil
	}

	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("factorysim: refusing to listen on %q: only loopback addresses are allowed", addr)
	}

	return nil
}

// URL is the base URL once started ("http://127.0.0.1:port").
func (s *Server) URL() string {
	if s.ln == nil {
		return ""
	}

	return "http://" + s.ln.Addr().String()
}

// Close stops the server.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}

	return s.srv.Close()
}

// SetFault injects f into every request whose path starts with pathPrefix ("/" for all). When
// several prefixes match, the longest wins. Setting a fault resets its FailFirst progress.
func (s *Server) SetFault(pathPrefix string, f Fault) {
	if f.Status == 0 {
		f.Status = http.StatusServiceUnavailable
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	s.faults[pathPrefix] = &fault{Fault: f}
}

// ClearFaults removes all faults.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.faults = map[string]*fault{}
}

// Requests counts requests (including failed ones) for method and exact path.
func (s *Server) Requests(method, path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.requests[method+" "+path]
}

// Downloads counts successful GET downloads of an image path ("/image/{id}/{v}/{file}").
// HEAD requests are not downloads.
func (s *Server) Downloads(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.downloads[path]
}

// AllDownloads returns a copy of the download counters, keyed by image path
// ("/image/{id}/{v}/{file}"), for reports that do not know the paths in advance.
func (s *Server) AllDownloads() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()

	out := make(map[string]int, len(s.downloads))
	for k, v := range s.downloads {
		out[k] = v
	}

	return out
}

// InjectedFailures counts responses failed by fault injection.
func (s *Server) InjectedFailures() int {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.injected
}

// AddSchematic stores a schematic as if it had been POSTed and returns its ID.
func (s *Server) AddSchematic(sc *schematic.Schematic) (string, error) {
	data, err := sc.Marshal()
	if err != nil {
		return "", err
	}

	id, err := sc.ID()
	if err != nil {
		return "", err
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	s.schematics[id] = data

	return id, nil
}

// HasSchematic reports whether the schematic ID is stored.
func (s *Server) HasSchematic(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()

	_, ok := s.schematics[id]

	return ok
}

// ImagePayload is the deterministic content served for an image path: 4-7 KiB (the size
// depends on the path, so size checks are meaningful) of a SHA-256 stream seeded by the path.
// An uncompressed .qcow2 starts with a valid qcow2 v3 header (virtual size
// ImageVirtualSize, no backing file), because Proxmox checks a transferred
// image with qemu-img info -f qcow2 and refuses anything else.
func ImagePayload(path string) []byte {
	out := imageStream(path)
	if strings.HasSuffix(path, ".qcow2") {
		copy(out, qcow2Header(ImageVirtualSize))
	}
	return out
}

// ImageVirtualSize is the disk size a served qcow2 image declares.
const ImageVirtualSize = 1 << 30

// qcow2Header is a minimal qcow2 version 3 header (104 bytes, 64 KiB
// clusters, refcount order 4, no backing file, no features).
func qcow2Header(virtualSize uint64) []byte {
	h := make([]byte, 104)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint32(h[20:], 16)
	binary.BigEndian.PutUint64(h[24:], virtualSize)
	binary.BigEndian.PutUint32(h[96:], 4)
	binary.BigEndian.PutUint32(h[100:], 104)
	return h
}

func imageStream(path string) []byte {
	seed := sha256.Sum256([]byte(path))
	size := 4096 + int(seed[0]%4)*1024

	out := make([]byte, 0, size+sha256.Size)
	block := seed

	for len(out) < size {
		block = sha256.Sum256(block[:])
		out = append(out, block[:]...)
	}

	return out[:size]
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	f := s.record(r)

	if f != nil && f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		select {
		case <-r.Context().Done():
			t.Stop()

			return
		case <-t.C:
		}
	}

	if status := s.injectFailure(f); status != 0 {
		http.Error(w, fmt.Sprintf("factorysim: injected failure for %s", r.URL.Path), status)

		return
	}

	s.mux.ServeHTTP(w, r)
}

// record counts the request and returns a snapshot-free pointer to its fault (nil if none).
func (s *Server) record(r *http.Request) *fault {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.requests[r.Method+" "+r.URL.Path]++

	var (
		best    *fault
		bestLen = -1
	)

	for prefix, f := range s.faults {
		if strings.HasPrefix(r.URL.Path, prefix) && len(prefix) > bestLen {
			best, bestLen = f, len(prefix)
		}
	}

	return best
}

func (s *Server) injectFailure(f *fault) int {
	if f == nil {
		return 0
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	fail := false

	if f.failed < f.FailFirst {
		f.failed++
		fail = true
	} else if f.ErrorRate > 0 && s.rng.Float64() < f.ErrorRate {
		fail = true
	}

	if !fail {
		return 0
	}

	s.injected++

	return f.Status
}

func (s *Server) createSchematic(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "failed to read body", http.StatusBadRequest)

		return
	}

	// Same rules as the factory: strict decoding (unknown fields rejected), then validation.
	sc, err := schematic.Unmarshal(body)
	if err == nil {
		err = sc.Validate(false)
	}

	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)

		return
	}

	id, err := s.AddSchematic(sc)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)

		return
	}

	s.mu.Lock()
	canonical := string(s.schematics[id])
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "schematic": canonical})
}

func (s *Server) getSchematic(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	data, ok := s.schematics[r.PathValue("id")]
	s.mu.Unlock()

	if !ok {
		http.Error(w, "schematic not found", http.StatusNotFound)

		return
	}

	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(data)
}

// imageFileRe is the subset of the factory's profile grammar (ParseFromPath) served here:
// disk images with optional compression and ISOs.
var imageFileRe = regexp.MustCompile(`^[a-z][a-z0-9]*-(amd64|arm64)(-secureboot)?\.(raw|qcow2|vpc|ova|iso)(\.tar\.gz|\.gz|\.xz|\.zst)?$`)

func (s *Server) image(w http.ResponseWriter, r *http.Request) {
	id, version, file := r.PathValue("id"), r.PathValue("version"), r.PathValue("file")

	if !s.HasSchematic(id) {
		http.Error(w, "schematic not found", http.StatusNotFound)

		return
	}

	if !slices.Contains(s.versions, version) {
		http.Error(w, "version not found", http.StatusNotFound)

		return
	}

	if !imageFileRe.MatchString(file) {
		http.Error(w, "unsupported image path", http.StatusNotFound)

		return
	}

	payload := ImagePayload(r.URL.Path)

	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
	w.WriteHeader(http.StatusOK)

	if r.Method == http.MethodHead {
		return
	}

	if _, err := w.Write(payload); err != nil {
		return
	}

	s.mu.Lock()
	s.downloads[r.URL.Path]++
	s.mu.Unlock()
}

func (s *Server) listVersions(w http.ResponseWriter, r *http.Request) {
	list := s.versions
	if r.URL.Query().Get("broken") == "true" {
		list = []string{}
	}

	writeJSON(w, list)
}

// ExtensionInfo mirrors the factory's /version/{v}/extensions/official entries.
type ExtensionInfo struct {
	Name        string `json:"name"`
	Ref         string `json:"ref"`
	Digest      string `json:"digest"`
	Author      string `json:"author"`
	Description string `json:"description"`
}

func (s *Server) listExtensions(w http.ResponseWriter, r *http.Request) {
	version := r.PathValue("version")
	if !slices.Contains(s.versions, version) {
		http.Error(w, "version not found", http.StatusNotFound)

		return
	}

	out := make([]ExtensionInfo, 0, len(s.extensions))

	for _, name := range s.extensions {
		sum := sha256.Sum256([]byte(name + "@" + version))
		out = append(out, ExtensionInfo{
			Name:        name,
			Ref:         "ghcr.io/" + name + ":" + strings.TrimPrefix(version, "v"),
			Digest:      "sha256:" + hex.EncodeToString(sum[:]),
			Author:      "Sidero Labs",
			Description: "simulated " + name,
		})
	}

	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
