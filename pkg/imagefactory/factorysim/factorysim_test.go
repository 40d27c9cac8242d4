package factorysim

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

const qgaID = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"

func start(t *testing.T, opts Options) *Server {
	t.Helper()

	s := New(opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { _ = s.Close() })

	return s
}

func do(t *testing.T, method, url, body string) (int, http.Header, string) {
	t.Helper()

	req, err := http.NewRequest(method, url, strings.NewReader(body)) //nolint:noctx
	if err != nil {
		t.Fatal(err)
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}

	return resp.StatusCode, resp.Header, string(b)
}

func TestCheckLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:0", true},
		{"127.0.0.2:8095", true},
		{"[::1]:0", true},
		{"localhost:0", true},
		{":8095", false},
		{"0.0.0.0:8095", false},
		{"[::]:8095", false},
		{"192.0.2.1:8095", false},
		{"factory.example:80", false},
		{"127.0.0.1", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			g := NewWithT(t)

			err := CheckLoopback(tc.addr)
			if tc.ok {
				g.Expect(err).NotTo(HaveOccurred())
			} else {
				g.Expect(err).To(HaveOccurred())
				// StartOn refuses before any listen call.
				g.Expect(New(Options{}).StartOn(tc.addr)).To(HaveOccurred())
			}
		})
	}
}

func TestSchematicEndpoints(t *testing.T) {
	g := NewWithT(t)
	s := start(t, Options{})

	for _, tc := range []struct {
		name       string
		body       string
		wantStatus int
		wantID     string
	}{
		{name: "empty", body: "customization: {}\n", wantStatus: http.StatusCreated, wantID: "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"},
		{name: "2-space yaml normalises", body: "customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/qemu-guest-agent]\n", wantStatus: http.StatusCreated, wantID: qgaID},
		{name: "json body", body: `{"customization":{"systemExtensions":{"officialExtensions":["siderolabs/qemu-guest-agent"]}}}`, wantStatus: http.StatusCreated, wantID: qgaID},
		{name: "unknown field", body: "customization:\n  systemExtension: {}\n", wantStatus: http.StatusBadRequest},
		{name: "enterprise owner", body: "owner: me\ncustomization: {}\n", wantStatus: http.StatusBadRequest},
		{name: "not yaml", body: "customization: [", wantStatus: http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)

			status, _, body := do(t, http.MethodPost, s.URL()+"/schematics", tc.body)
			g.Expect(status).To(Equal(tc.wantStatus), body)

			if tc.wantID == "" {
				return
			}

			var resp struct{ ID, Schematic string }
			g.Expect(json.Unmarshal([]byte(body), &resp)).To(Succeed())
			g.Expect(resp.ID).To(Equal(tc.wantID))

			status, hdr, yaml := do(t, http.MethodGet, s.URL()+"/schematics/"+tc.wantID, "")
			g.Expect(status).To(Equal(http.StatusOK))
			g.Expect(hdr.Get("Content-Type")).To(Equal("application/yaml"))
			g.Expect(yaml).To(Equal(resp.Schematic))
		})
	}

	status, _, _ := do(t, http.MethodGet, s.URL()+"/schematics/"+strings.Repeat("a", 64), "")
	g.Expect(status).To(Equal(http.StatusNotFound))
}

func TestImageEndpoint(t *testing.T) {
	g := NewWithT(t)
	s := start(t, Options{Versions: []string{"v1.14.1"}})

	status, _, _ := do(t, http.MethodPost, s.URL()+"/schematics", "customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/qemu-guest-agent]\n")
	g.Expect(status).To(Equal(http.StatusCreated))

	good := "/image/" + qgaID + "/v1.14.1/nocloud-amd64.qcow2"
	other := "/image/" + qgaID + "/v1.14.1/metal-arm64-secureboot.qcow2"

	for _, tc := range []struct {
		path   string
		status int
	}{
		{good, http.StatusOK},
		{other, http.StatusOK},
		{"/image/" + qgaID + "/v1.14.1/nocloud-amd64.raw.xz", http.StatusOK},
		{"/image/" + qgaID + "/v1.13.0/nocloud-amd64.qcow2", http.StatusNotFound},                   // unknown version
		{"/image/" + strings.Repeat("b", 64) + "/v1.14.1/nocloud-amd64.qcow2", http.StatusNotFound}, // unknown schematic
		{"/image/" + qgaID + "/v1.14.1/nocloud-x86.qcow2", http.StatusNotFound},                     // bad file
	} {
		st, hdr, _ := do(t, http.MethodHead, s.URL()+tc.path, "")
		g.Expect(st).To(Equal(tc.status), tc.path)

		if st == http.StatusOK {
			g.Expect(hdr.Get("Content-Length")).To(Equal(itoa(len(ImagePayload(tc.path)))))
		}
	}

	g.Expect(s.Downloads(good)).To(BeZero())

	for i := 1; i <= 2; i++ {
		st, hdr, body := do(t, http.MethodGet, s.URL()+good, "")
		g.Expect(st).To(Equal(http.StatusOK))
		g.Expect(body).To(Equal(string(ImagePayload(good))))
		g.Expect(hdr.Get("Content-Length")).To(Equal(itoa(len(body))))
		g.Expect(s.Downloads(good)).To(Equal(i))
	}

	g.Expect(s.Downloads(other)).To(BeZero(), "counters are per path")
	g.Expect(s.Requests(http.MethodHead, good)).To(Equal(1))
	g.Expect(s.Requests(http.MethodGet, good)).To(Equal(2))
}

func TestImagePayloadDeterministic(t *testing.T) {
	g := NewWithT(t)

	a := ImagePayload("/image/x/v1/nocloud-amd64.qcow2")
	g.Expect(ImagePayload("/image/x/v1/nocloud-amd64.qcow2")).To(Equal(a))
	g.Expect(len(a)).To(BeNumerically(">=", 4096))
	g.Expect(len(a)).To(BeNumerically("<", 8192))
	g.Expect(ImagePayload("/image/x/v1/metal-amd64.qcow2")).NotTo(Equal(a))
}

func TestVersionsAndExtensions(t *testing.T) {
	g := NewWithT(t)
	s := start(t, Options{})

	_, _, body := do(t, http.MethodGet, s.URL()+"/versions", "")
	g.Expect(body).To(MatchJSON(`["v1.13.9","v1.14.0","v1.14.1"]`))

	_, _, body = do(t, http.MethodGet, s.URL()+"/versions?broken=true", "")
	g.Expect(body).To(MatchJSON(`[]`))

	st, _, body := do(t, http.MethodGet, s.URL()+"/version/v1.14.1/extensions/official", "")
	g.Expect(st).To(Equal(http.StatusOK))

	var exts []ExtensionInfo
	g.Expect(json.Unmarshal([]byte(body), &exts)).To(Succeed())
	g.Expect(exts).To(HaveLen(len(DefaultExtensions)))
	g.Expect(exts[1].Name).To(Equal("siderolabs/qemu-guest-agent"))
	g.Expect(exts[1].Ref).To(Equal("ghcr.io/siderolabs/qemu-guest-agent:1.14.1"))
	g.Expect(exts[1].Digest).To(HavePrefix("sha256:"))

	st, _, _ = do(t, http.MethodGet, s.URL()+"/version/v9.9.9/extensions/official", "")
	g.Expect(st).To(Equal(http.StatusNotFound))
}

func TestFaults(t *testing.T) {
	t.Run("fail first N, longest prefix wins", func(t *testing.T) {
		g := NewWithT(t)
		s := start(t, Options{})
		s.SetFault("/", Fault{FailFirst: 100, Status: http.StatusInternalServerError})
		s.SetFault("/versions", Fault{FailFirst: 1})

		st, _, _ := do(t, http.MethodGet, s.URL()+"/versions", "")
		g.Expect(st).To(Equal(http.StatusServiceUnavailable)) // default status
		st, _, _ = do(t, http.MethodGet, s.URL()+"/versions", "")
		g.Expect(st).To(Equal(http.StatusOK))
		st, _, _ = do(t, http.MethodGet, s.URL()+"/version/v1.14.1/extensions/official", "")
		g.Expect(st).To(Equal(http.StatusInternalServerError))
		g.Expect(s.InjectedFailures()).To(Equal(2))

		s.ClearFaults()
		st, _, _ = do(t, http.MethodGet, s.URL()+"/version/v1.14.1/extensions/official", "")
		g.Expect(st).To(Equal(http.StatusOK))
	})

	t.Run("seeded error rate is reproducible", func(t *testing.T) {
		g := NewWithT(t)

		run := func(seed uint64) []int {
			s := start(t, Options{Seed: seed})
			s.SetFault("/versions", Fault{ErrorRate: 0.5})

			var out []int
			for range 20 {
				st, _, _ := do(t, http.MethodGet, s.URL()+"/versions", "")
				out = append(out, st)
			}

			return out
		}

		a := run(42)
		g.Expect(run(42)).To(Equal(a))
		g.Expect(a).To(ContainElement(http.StatusOK))
		g.Expect(a).To(ContainElement(http.StatusServiceUnavailable))
	})

	t.Run("latency", func(t *testing.T) {
		g := NewWithT(t)
		s := start(t, Options{})
		s.SetFault("/versions", Fault{Latency: 50 * time.Millisecond})

		begin := time.Now()
		st, _, _ := do(t, http.MethodGet, s.URL()+"/versions", "")
		g.Expect(st).To(Equal(http.StatusOK))
		g.Expect(time.Since(begin)).To(BeNumerically(">=", 50*time.Millisecond))
	})
}

func itoa(n int) string {
	b, _ := json.Marshal(n)

	return string(b)
}
