package proxmox

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	. "github.com/onsi/gomega"
)

func TestLimiterBoundsInFlightAtServer(t *testing.T) {
	tests := []struct {
		name              string
		global, perNode   int
		nodes             []string
		wantGlobalReached bool
	}{
		{name: "global 4, per node 2, three nodes", global: 4, perNode: 2, nodes: []string{"pve1", "pve2", "pve3"}, wantGlobalReached: true},
		{name: "global 3, per node 3, one node", global: 3, perNode: 3, nodes: []string{"pve1"}, wantGlobalReached: true},
		{name: "global 1", global: 1, perNode: 1, nodes: []string{"pve1", "pve2"}, wantGlobalReached: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			f := newFakePVE(t)
			f.delay = 5 * time.Millisecond
			f.handle("GET /nodes/{node}/qemu/{vmid}/status/current", func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, map[string]any{"status": "running", "vmid": r.PathValue("vmid")})
			})
			c := f.client(func(c *Config) {
				c.Limits = Limits{MaxInFlight: tt.global, MaxInFlightPerNode: tt.perNode, QPS: -1}
			})
			var wg sync.WaitGroup
			for i := range 60 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := c.VMStatus(context.Background(), tt.nodes[i%len(tt.nodes)], 100+i)
					g.Expect(err).NotTo(HaveOccurred())
				}()
			}
			wg.Wait()
			g.Expect(f.maxFlight.Load()).To(BeNumerically("<=", tt.global), "server saw more concurrent requests than allowed")
			for _, n := range tt.nodes {
				g.Expect(f.maxNode(n)).To(BeNumerically("<=", tt.perNode), "node %s", n)
			}
			if tt.wantGlobalReached {
				// The limit is also used, not just respected by serializing.
				g.Expect(c.Limiter().MaxObservedInFlight()).To(BeNumerically("==", min(tt.global, tt.perNode*len(tt.nodes))))
			}
		})
	}
}

func TestLimiterQPS(t *testing.T) {
	g := NewWithT(t)
	f := newFakePVE(t)
	f.handle("GET /nodes", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, []any{}) })
	c := f.client(func(c *Config) { c.Limits = Limits{MaxInFlight: 8, QPS: 100, Burst: 1} })
	start := time.Now()
	for range 11 {
		_, err := c.Nodes(context.Background())
		g.Expect(err).NotTo(HaveOccurred())
	}
	// 11 requests at 100/s with burst 1 need >= 100ms.
	g.Expect(time.Since(start)).To(BeNumerically(">=", 90*time.Millisecond))
}

func TestLimiterSharedAndCancel(t *testing.T) {
	g := NewWithT(t)
	lim := NewLimiter(Limits{MaxInFlight: 1, MaxInFlightPerNode: 1, QPS: -1})
	rel, err := lim.acquire(context.Background(), "pve1")
	g.Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err = lim.acquire(ctx, "pve2")
	g.Expect(err).To(MatchError(context.DeadlineExceeded))
	rel()
	rel() // idempotent
	rel2, err := lim.acquire(context.Background(), "pve2")
	g.Expect(err).NotTo(HaveOccurred())
	rel2()
}

func TestMetrics(t *testing.T) {
	g := NewWithT(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	g.Expect(err).NotTo(HaveOccurred())
	// A second client in the same process registers again: reused.
	m2, err := NewMetrics(reg)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m2.operations).To(BeIdenticalTo(m.operations))

	f := newFakePVE(t)
	n := 0
	var mu sync.Mutex
	f.handle("GET /nodes", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			pveError(w, 503, "busy", nil)
			return
		}
		writeJSON(w, []any{})
	})
	f.handle("GET /nodes/{node}/qemu/{vmid}/status/current", func(w http.ResponseWriter, r *http.Request) {
		pveError(w, 500, "Configuration file 'nodes/pve1/qemu-server/1.conf' does not exist", nil)
	})
	c := f.client(func(c *Config) { c.Metrics = m })
	_, err = c.Nodes(context.Background())
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.VMStatus(context.Background(), "pve1", 100)
	g.Expect(err).To(MatchError(ErrNotFound))

	g.Expect(testutil.ToFloat64(m.operations.WithLabelValues("Nodes", "success"))).To(Equal(1.0))
	g.Expect(testutil.ToFloat64(m.operations.WithLabelValues("VMStatus", "not_found"))).To(Equal(1.0))
	g.Expect(testutil.ToFloat64(m.requests.WithLabelValues("GET", "503"))).To(Equal(1.0))
	g.Expect(testutil.ToFloat64(m.requests.WithLabelValues("GET", "200"))).To(Equal(1.0))
	g.Expect(testutil.ToFloat64(m.retries.WithLabelValues("server_error"))).To(Equal(1.0))
	g.Expect(testutil.ToFloat64(m.inFlight)).To(Equal(0.0))

	names := map[string]bool{}
	mfs, err := reg.Gather()
	g.Expect(err).NotTo(HaveOccurred())
	for _, mf := range mfs {
		names[mf.GetName()] = true
		// No label or value may carry the secret.
		g.Expect(mf.String()).NotTo(ContainSubstring(testSecret))
	}
	for _, want := range []string{"operations_total", "operation_duration_seconds", "http_requests_total", "http_request_duration_seconds", "http_requests_in_flight", "retries_total"} {
		g.Expect(names).To(HaveKey("proxmox_talos_pve_"+want), want)
	}
}
