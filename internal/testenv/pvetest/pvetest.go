// Package pvetest starts pvesim for a test and connects a Proxmox client to it, with the
// short task polls and retries unit tests want.
package pvetest

import (
	"strings"
	"testing"
	"time"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// Start runs a pvesim with cfg over TLS until the test ends and returns it with a client.
func Start(t testing.TB, cfg pvesim.Config) (*pvesim.Server, *proxmox.PVEClient) {
	t.Helper()
	sim, err := pvesim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.StartTLS(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	return sim, Client(t, sim)
}

// Client is a new Proxmox client (its own process state: VMID reservations, snapshots) of
// a running pvesim, as a restarted manager would have.
func Client(t testing.TB, sim *pvesim.Server) *proxmox.PVEClient {
	t.Helper()
	pve, err := proxmox.New(proxmox.Config{
		URL: strings.TrimSuffix(sim.URL(), "/api2/json"), TokenID: pvesim.DefaultTokenID, TokenSecret: pvesim.DefaultTokenSecret,
		CABundle: sim.CAPEM(), TaskPollInitial: 5 * time.Millisecond, TaskPollMax: 20 * time.Millisecond,
		Retry: proxmox.RetryPolicy{MaxAttempts: 2, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	return pve
}
