package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// TestVMIDTakenByAnotherTool: the VMID recorded for a machine is taken by a VM that is not
// the machine's (another tool created it first). The controller must leave that VM alone,
// pick another VMID and provision the machine with exactly one VM of its own.
func TestVMIDTakenByAnotherTool(t *testing.T) {
	f := newFixture(t, "vmid")
	startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()

	const foreign = 4321
	pveClient := testPVE(t)
	ctx := context.Background()
	if _, err := pveClient.CreateVM(ctx, proxmox.VMSpec{
		Node: "pve1", VMID: foreign, Name: "someone-elses", MemoryMiB: 1024,
		BootDisk: proxmox.Disk{Storage: "local-lvm", SizeGiB: 1},
	}); err != nil {
		t.Fatal(err)
	}

	f.createMachine("vmid-w-0", machineOpts{vmID: ptr.To[int32](foreign)})
	f.waitProvisioned(60*time.Second, "vmid-w-0")

	m := f.ptm("vmid-w-0")
	if got := ptr.Deref(m.Spec.VMID, 0); got == foreign {
		t.Fatalf("machine still records the foreign VMID %d", got)
	}
	vms := f.vmsOf("vmid-w-0")
	if len(vms) != 1 || vms[0].VMID != int(*m.Spec.VMID) {
		t.Fatalf("want exactly one VM with VMID %d, got %+v", *m.Spec.VMID, vms)
	}
	if vm, err := pveClient.VMConfig(ctx, "pve1", foreign); err != nil || vm.Name() != "someone-elses" {
		t.Fatalf("the foreign VM was touched: %+v, %v", vm, err)
	}

	if err := pveClient.DeleteVM(ctx, "pve1", foreign); err != nil {
		t.Fatal(err)
	}
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "vmid-w-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}
