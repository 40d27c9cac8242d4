package controllers

import (
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestRestartAtEveryStep stops the controllers right after every observed write to a
// machine (each step transition, node, VMID, uuid, addresses, provisioned) and starts
// fresh ones, as a crash would; each machine still ends with exactly one VM.
func TestRestartAtEveryStep(t *testing.T) {
	f := newFixture(t, "rst")
	m := startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	m.stop()

	names := []string{"rst-cp-0", "rst-w-0"}
	for i, n := range names {
		f.createMachine(n, machineOpts{controlPlane: i == 0})
	}
	signature := func() string {
		s := ""
		for _, n := range names {
			p := f.ptm(n)
			s += p.ResourceVersion + fmt.Sprintf("|%s|%s|%v|%s|%d|%v;", p.Status.Step, p.Spec.Node, ptr.Deref(p.Spec.VMID, 0), p.Spec.SMBIOSUUID,
				len(p.Spec.IPAddresses), ptr.Deref(p.Status.Initialization.Provisioned, false))
		}
		return s
	}
	done := func() bool {
		for _, n := range names {
			if !ptr.Deref(f.ptm(n).Status.Initialization.Provisioned, false) {
				return false
			}
		}
		return true
	}

	restarts := 0
	seen := map[string]bool{}
	for !done() {
		if restarts > 60 {
			t.Fatalf("not provisioned after %d restarts: %s", restarts, signature())
		}
		before := signature()
		m := startManager(t)
		deadline := time.Now().Add(5 * time.Second)
		for signature() == before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		m.stop()
		restarts++
		seen[signature()] = true
		for _, n := range names {
			if vms := f.vmsOf(n); len(vms) > 1 {
				t.Fatalf("%s has %d VMs after restart %d", n, len(vms), restarts)
			}
		}
	}
	t.Logf("provisioned after %d restarts through %d distinct states", restarts, len(seen))
	for _, n := range names {
		if vms := f.vmsOf(n); len(vms) != 1 {
			t.Errorf("%s: %d VMs, want 1", n, len(vms))
		}
	}

	startManager(t)
	for _, n := range names {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}
