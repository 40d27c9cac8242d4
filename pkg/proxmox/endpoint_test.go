package proxmox

import (
	"context"
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
