package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// TestForeignVMSurvivesMachineDeletion: while the controller was down, the machine's VM
// was removed and another tool created a VM of its own at the same node and VMID. Deleting
// the machine leaves that VM untouched, and a Warning event names it.
func TestForeignVMSurvivesMachineDeletion(t *testing.T) {
	f := newFixture(t, "foreign")
	m := startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	f.createMachine("foreign-w-0", machineOpts{})
	f.waitProvisioned(60*time.Second, "foreign-w-0")
	m.stop()

	ptm := f.ptm("foreign-w-0")
	node, vmid := ptm.Spec.Node, int(*ptm.Spec.VMID)
	ctx := context.Background()
	pveClient := testPVE(t)
	if err := pveClient.DeleteVM(ctx, node, vmid); err != nil {
		t.Fatal(err)
	}
	if _, err := pveClient.CreateVM(ctx, proxmox.VMSpec{
		Node: node, VMID: vmid, Name: "someone-elses", MemoryMiB: 1024,
		BootDisk: proxmox.Disk{Storage: "local-lvm", SizeGiB: 1},
	}); err != nil {
		t.Fatal(err)
	}
	if err := pveClient.StartVM(ctx, node, vmid); err != nil {
		t.Fatal(err)
	}

	startManager(t)
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "foreign-w-0"}})
	eventually(t, 30*time.Second, func() error {
		var list infrav1.ProxmoxTalosMachineList
		if err := k8s.List(ctx, &list, client.InNamespace(f.ns)); err != nil {
			return err
		}
		if len(list.Items) != 0 {
			return fmt.Errorf("machine not deleted: %s", condSummary(list.Items[0].Status.Conditions))
		}
		return nil
	})
	st, err := pveClient.VMStatus(ctx, node, vmid)
	if err != nil || st.Name != "someone-elses" || !st.Running() {
		t.Fatalf("the foreign VM %d was touched: %+v, %v", vmid, st, err)
	}
	eventually(t, 10*time.Second, func() error {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace(f.ns)); err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Reason == infrav1.ForeignVMReason && ev.Type == "Warning" &&
				strings.Contains(ev.Note, fmt.Sprintf("VM %d on node %s", vmid, node)) && strings.Contains(ev.Note, "someone-elses") {
				return nil
			}
		}
		return fmt.Errorf("no ForeignVM Warning event naming VM %d among %d events", vmid, len(evs.Items))
	})

	if err := pveClient.DeleteVM(ctx, node, vmid); err != nil {
		t.Fatal(err)
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}
