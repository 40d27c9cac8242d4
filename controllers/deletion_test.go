package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv/pvetest"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// testPVE is a Proxmox client of the test itself, to change VMs behind the controller's back.
func testPVE(t *testing.T) proxmox.Client {
	t.Helper()
	return pvetest.Client(t, pve)
}

// TestDeletionInEveryState deletes machines before their VM exists, with the VM running,
// with the VM stopped, and while Proxmox answers lock timeouts; nothing is left behind:
// no VM, no disk, no boot ISO, no address claim, no finalizer on the credentials.
func TestDeletionInEveryState(t *testing.T) {
	f := newFixture(t, "del")
	startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	ctx := context.Background()

	f.createMachine("del-pending", machineOpts{noBootstrap: true})
	for _, n := range []string{"del-running", "del-stopped", "del-locked"} {
		f.createMachine(n, machineOpts{})
	}
	f.waitProvisioned(60*time.Second, "del-running", "del-stopped", "del-locked")
	eventually(t, 10*time.Second, func() error {
		if s := f.ptm("del-pending").Status.Step; s != infrav1.StepWaitingForBootstrapData {
			return fmt.Errorf("del-pending is in step %q", s)
		}
		return nil
	})

	stopped := f.ptm("del-stopped")
	if err := testPVE(t).StopVM(ctx, stopped.Spec.Node, int(*stopped.Spec.VMID)); err != nil {
		t.Fatal(err)
	}

	for _, n := range []string{"del-pending", "del-running", "del-stopped"} {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	eventually(t, 30*time.Second, func() error {
		var list infrav1.ProxmoxTalosMachineList
		if err := k8s.List(ctx, &list, client.InNamespace(f.ns)); err != nil {
			return err
		}
		if len(list.Items) != 1 {
			return fmt.Errorf("%d machines left", len(list.Items))
		}
		return nil
	})
	for _, n := range []string{"del-running", "del-stopped"} {
		if vms := f.vmsOf(n); len(vms) != 0 {
			t.Errorf("%s: VM %d left", n, vms[0].VMID)
		}
	}

	// Proxmox cannot take the VM's lock for a while: deletion waits and retries.
	pve.AddFault(pvesim.Fault{Method: "DELETE", Path: "/nodes/{node}/qemu/{vmid}", LockTimeoutRate: 1})
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "del-locked"}})
	eventually(t, 30*time.Second, func() error {
		c := conditions.Get(f.ptm("del-locked"), infrav1.VMProvisionedCondition)
		if c == nil || !strings.Contains(strings.ToLower(c.Message), "lock") {
			return fmt.Errorf("no lock timeout reported yet: %+v", c)
		}
		return nil
	})
	if len(f.vmsOf("del-locked")) != 1 {
		t.Fatal("VM deleted despite lock timeouts")
	}
	pve.ClearFaults()

	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}
