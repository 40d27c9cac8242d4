package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestFailureDomains: status.failureDomains mirrors the spec and every machine lands on
// the node of its Machine's failure domain, three control planes on three nodes.
func TestFailureDomains(t *testing.T) {
	f := newFixture(t, "fd")
	startManager(t)
	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) {
		s.FailureDomains = []infrav1.FailureDomain{
			{Name: "fd-a", Nodes: []string{"pve1"}},
			{Name: "fd-b", Nodes: []string{"pve2"}},
			{Name: "fd-c", Nodes: []string{"pve3"}},
		}
	})
	f.markInfrastructureProvisioned()

	var infra infrav1.ProxmoxTalosCluster
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &infra); err != nil {
		t.Fatal(err)
	}
	if len(infra.Status.FailureDomains) != 3 || infra.Status.FailureDomains[1].Name != "fd-b" ||
		infra.Status.FailureDomains[1].Attributes["nodes"] != "pve2" || !*infra.Status.FailureDomains[1].ControlPlane {
		t.Fatalf("status.failureDomains = %+v", infra.Status.FailureDomains)
	}

	want := map[string]string{"fd-cp-0": "pve1", "fd-cp-1": "pve2", "fd-cp-2": "pve3", "fd-w-0": "pve2"}
	fds := map[string]string{"fd-cp-0": "fd-a", "fd-cp-1": "fd-b", "fd-cp-2": "fd-c", "fd-w-0": "fd-b"}
	for n, fd := range fds {
		f.createMachine(n, machineOpts{controlPlane: n != "fd-w-0", failureDomain: fd})
	}
	names := []string{"fd-cp-0", "fd-cp-1", "fd-cp-2", "fd-w-0"}
	f.waitProvisioned(60*time.Second, names...)
	for _, n := range names {
		m := f.ptm(n)
		if m.Spec.Node != want[n] || m.Status.FailureDomain != fds[n] {
			t.Errorf("%s: node %s failureDomain %s, want %s %s", n, m.Spec.Node, m.Status.FailureDomain, want[n], fds[n])
		}
		if vms := f.vmsOf(n); len(vms) != 1 || vms[0].Node != want[n] {
			t.Errorf("%s: VMs %+v", n, vms)
		}
	}

	for _, n := range names {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}
