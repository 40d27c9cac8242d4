package pvesim

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestFaultInjection(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Nodes: []NodeConfig{{Name: "pve1"}, {Name: "pve2"}}, Seed: 42})

	s.AddFault(Fault{Method: "GET", Path: "/version", ErrorRate: 1, ErrorText: "proxy loop detected"})
	r := root(t, s, "GET", "/version", nil)
	g.Expect(r.status).To(Equal(500))
	g.Expect(r.reason).To(Equal("proxy loop detected"))
	s.ClearFaults()

	s.AddFault(Fault{Path: "/nodes/{node}/qemu", Method: "POST", TaskFailureRate: 1, TaskErrorText: "boom"})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")))).To(Equal("boom"))
	g.Expect(s.Inventory().VMs).To(BeEmpty())
	s.ClearFaults()

	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")))).To(Equal("OK"))
	s.AddFault(Fault{Path: "/nodes/{node}/qemu/{vmid}/status/*", LockTimeoutRate: 1})
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil))).
		To(Equal("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"))
	s.ClearFaults()

	// Deterministic rates: the same seed gives the same outcome sequence.
	outcomes := func() []int {
		s2 := startSim(t, Config{Seed: 7})
		s2.AddFault(Fault{Path: "/version", ErrorRate: 0.5})
		var out []int
		for i := 0; i < 20; i++ {
			out = append(out, root(t, s2, "GET", "/version", nil).status)
		}
		return out
	}
	a, b := outcomes(), outcomes()
	g.Expect(a).To(Equal(b))
	g.Expect(a).To(ContainElement(500))
	g.Expect(a).To(ContainElement(200))

	s.SetNodeOnline("pve2", false)
	r = root(t, s, "GET", "/nodes/pve2/qemu", nil)
	g.Expect(r.status).To(Equal(595))
	g.Expect(r.reason).To(ContainSubstring("No route to host"))
	nodes := root(t, s, "GET", "/nodes", nil).body["data"].([]any)
	g.Expect(nodes[1]).To(HaveKeyWithValue("status", "offline"))

	// Every injected fault is counted by kind: 1 error, 1 task failure, 1 lock timeout,
	// 1 offline node above.
	g.Expect(s.InjectedFaults()).To(Equal(map[string]int{
		FaultHTTPError: 1, FaultTaskFailure: 1, FaultLockTimeout: 1, FaultNodeUnreachable: 1,
	}))
	s.SetNodeOnline("pve2", true)
	s.AddFault(Fault{ProxyErrorRate: 1})
	g.Expect(root(t, s, "GET", "/nodes/pve2/qemu", nil).status).To(Equal(596))
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu", nil).status).To(Equal(200), "pve1 receives the call: nothing to forward")
	g.Expect(s.InjectedFaults()).To(HaveKeyWithValue(FaultProxyError, 1))
	s.ClearFaults()

	s.AddFault(Fault{Path: "/cluster/nextid", Latency: 30 * time.Millisecond})
	start := time.Now()
	root(t, s, "GET", "/cluster/nextid", nil)
	g.Expect(time.Since(start)).To(BeNumerically(">=", 30*time.Millisecond))
}

func TestCountersAndConcurrency(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{})
	s.AddFault(Fault{Path: "/nodes/{node}/status", Latency: 400 * time.Millisecond}) // long enough to overlap on a loaded machine
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			root(t, s, "GET", "/nodes/pve1/status", nil)
		}()
	}
	wg.Wait()
	st := s.Stats()
	g.Expect(st.Calls["GET /nodes/{node}/status"]).To(Equal(4))
	g.Expect(st.MaxInFlight).To(Equal(4))
	g.Expect(st.NodeMaxInFlight["pve1"]).To(Equal(4))
	g.Expect(st.InFlight).To(Equal(0))
	s.ResetStats()
	g.Expect(s.Stats().Calls).To(BeEmpty())
}

func TestDownloadURL(t *testing.T) {
	g := NewWithT(t)
	payload := []byte("fake iso payload")
	sum := sha256.Sum256(payload)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing.iso" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(payload)
	}))
	defer srv.Close()
	s := startSim(t, Config{})
	tests := []struct {
		name   string
		params []string
		status int
		exit   string
	}{
		{"ok with checksum, insecure", []string{"filename", "a.iso", "url", srv.URL + "/a.iso", "checksum", hex.EncodeToString(sum[:]),
			"checksum-algorithm", "sha256", "verify-certificates", "0"}, 200, "OK"},
		{"tls verification fails", []string{"filename", "b.iso", "url", srv.URL + "/b.iso"}, 200, "certificate"},
		{"checksum mismatch", []string{"filename", "c.iso", "url", srv.URL + "/c.iso", "checksum", "00", "checksum-algorithm", "md5",
			"verify-certificates", "0"}, 200, "checksum mismatch"},
		{"http error", []string{"filename", "d.iso", "url", srv.URL + "/missing.iso", "verify-certificates", "0"}, 200, "404"},
		{"non-loopback refused", []string{"filename", "e.iso", "url", "https://factory.talos.dev/e.iso"}, 200, "only downloads from loopback"},
		{"bad extension", []string{"filename", "e.qcow2", "url", srv.URL + "/e"}, 400, ""},
		{"existing file fails the task", []string{"filename", "a.iso", "url", srv.URL + "/a.iso"}, 200, "refusing to override existing file '/var/lib/vz/template/iso/a.iso'"},
		{"bad url pattern", []string{"filename", "f.iso", "url", "ftp://127.0.0.1/x"}, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := root(t, s, "POST", "/nodes/pve1/storage/local/download-url", form(append([]string{"content", "iso"}, tc.params...)...))
			g.Expect(r.status).To(Equal(tc.status), r.reason)
			if tc.status == 200 {
				g.Expect(waitTask(t, s, "pve1", r)).To(ContainSubstring(tc.exit))
			}
		})
	}
	isos := s.Inventory().VolumesByContent("iso")
	g.Expect(isos).To(HaveLen(1))
	g.Expect(isos[0].VolID).To(Equal("local:iso/a.iso"))
	list := root(t, s, "GET", "/nodes/pve1/storage/local/content", form("content", "iso")).body["data"].([]any)
	g.Expect(list).To(ConsistOf(HaveKeyWithValue("volid", "local:iso/a.iso")))
}

// TestUnreapedTaskListedRunning: a task whose forking daemon was recycled while it ran is
// listed running after it ended (its own status is exact), until the next task starts on
// the node and active_workers records its end.
func TestUnreapedTaskListedRunning(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{Nodes: []NodeConfig{{Name: "pve1"}}})
	s.AddFault(Fault{Method: "POST", Path: "/nodes/{node}/qemu", UnreapedTaskRate: 1})
	created := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100"))
	upid := created.body["data"].(string)
	g.Expect(waitTask(t, s, "pve1", created)).To(Equal("OK"))
	listed := func() map[string]any {
		for _, e := range root(t, s, "GET", "/nodes/pve1/tasks?source=all", nil).body["data"].([]any) {
			if e.(map[string]any)["upid"] == upid {
				return e.(map[string]any)
			}
		}
		return nil
	}
	g.Expect(listed()).To(HaveKeyWithValue("status", "RUNNING"))
	g.Expect(listed()).NotTo(HaveKey("endtime"))
	g.Expect(s.InjectedFaults()).To(HaveKeyWithValue(FaultUnreapedTask, 1))

	s.ClearFaults()
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("OK"))
	g.Expect(listed()).To(HaveKeyWithValue("status", "OK"))
	g.Expect(listed()).To(HaveKey("endtime"))
}
