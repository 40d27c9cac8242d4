package proxmox

import (
	"context"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// TestEndpointSharedAcrossClients: clients of one Proxmox API (one per cluster in the
// manager) share VMID reservations, so concurrent allocations through different clients
// never return the same VMID; and they share the /cluster/resources, /nodes and storage
// list snapshots, so many readers within maxAge cost one call each.
func TestEndpointSharedAcrossClients(t *testing.T) {
	g := NewWithT(t)
	var eps Endpoints
	env := startSim(t, pvesim.Config{Nodes: []pvesim.NodeConfig{{Name: "pve1"}}}, func(c *Config) {
		c.Endpoint = eps.For(c.URL, 0)
	})
	// The same URL spelled differently is the same endpoint.
	g.Expect(eps.For(env.cfg.URL+"/api2/json/", 0)).To(BeIdenticalTo(env.cfg.Endpoint))
	clients := []*PVEClient{env.client}
	for range 3 {
		c, err := New(env.cfg)
		g.Expect(err).NotTo(HaveOccurred())
		clients = append(clients, c)
	}

	ctx := context.Background()
	var mu sync.Mutex
	seen := map[int]int{}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := clients[i%len(clients)].AllocateVMID(ctx, VMIDRange{Min: 100, Max: 1000})
			g.Expect(err).NotTo(HaveOccurred())
			mu.Lock()
			seen[id]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	g.Expect(seen).To(HaveLen(40), "every allocation through any client got its own VMID")

	before := env.sim.Stats().Calls
	for i := range 20 {
		_, err := clients[i%len(clients)].ClusterVMs(ctx, time.Minute)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = clients[i%len(clients)].ClusterNodes(ctx, time.Minute)
		g.Expect(err).NotTo(HaveOccurred())
		storages, err := clients[i%len(clients)].Storages(ctx, "pve1")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(storages).NotTo(BeEmpty())
	}
	after := env.sim.Stats().Calls
	// The allocations above left a snapshot younger than a minute: no resources read.
	g.Expect(after["GET /cluster/resources"] - before["GET /cluster/resources"]).To(Equal(0))
	// Nodes come from the same snapshot (its type=node entries).
	g.Expect(after["GET /nodes"] - before["GET /nodes"]).To(Equal(0))
	// Every cluster's preflight lists the storages after the same resync: one read.
	g.Expect(after["GET /nodes/{node}/storage"] - before["GET /nodes/{node}/storage"]).To(Equal(1))

	// A client with its own endpoint (another Proxmox, or none shared) reads for itself.
	own := env.cfg
	own.Endpoint = nil
	c, err := New(own)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.ClusterVMs(ctx, time.Minute)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env.sim.Stats().Calls["GET /cluster/resources"] - after["GET /cluster/resources"]).To(Equal(1))
}

// TestClientsOfOneEndpointShareConnections: the manager builds a client per cluster; those
// of one Proxmox API with the same TLS setting share one connection pool, so requests of
// many clients one after the other reuse one connection to pveproxy. A client that trusts
// other certificates (or none) has a pool of its own, as has a client without an Endpoint.
func TestClientsOfOneEndpointShareConnections(t *testing.T) {
	g := NewWithT(t)
	var mu sync.Mutex
	conns := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"data":{"version":"9.1.2","release":"9.1","repoid":"x"}}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.StartTLS()
	defer srv.Close()
	newConns := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := conns
		conns = 0
		return n
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	var eps Endpoints
	cfg := func(shared bool, tune func(*Config)) Config {
		c := Config{URL: srv.URL, TokenID: "capi@pve!t", TokenSecret: "00000000-0000-0000-0000-000000000000", CABundle: ca}
		if shared {
			c.Endpoint = eps.For(c.URL, 0)
		}
		if tune != nil {
			tune(&c)
		}
		return c
	}
	ask := func(c Config) {
		cl, err := New(c)
		g.Expect(err).NotTo(HaveOccurred())
		var out map[string]any
		g.Expect(cl.do(context.Background(), http.MethodGet, "/version", nil, nil, &out)).To(Succeed())
	}

	for range 10 {
		ask(cfg(true, nil))
	}
	g.Expect(newConns()).To(Equal(1), "ten clients of one endpoint, one connection")

	ask(cfg(true, func(c *Config) { c.CABundle, c.InsecureSkipVerify = nil, true }))
	g.Expect(newConns()).To(Equal(1), "another TLS setting, another pool")

	for range 3 {
		ask(cfg(false, nil))
	}
	g.Expect(newConns()).To(Equal(3), "clients without an endpoint keep their own pools")
}
