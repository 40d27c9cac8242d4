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

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestDeletionWithoutOwnerMachine: the owner Machine is gone when its
// ProxmoxTalosMachine is deleted. The VM is still deleted (through the cluster named in
// the machine's labels) and a condition says the owner is gone.
func TestDeletionWithoutOwnerMachine(t *testing.T) {
	f := newFixture(t, "orphan")
	startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	f.createMachine("orphan-w-0", machineOpts{})
	f.waitProvisioned(60*time.Second, "orphan-w-0")
	ctx := context.Background()

	deleteObj(t, &clusterv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "orphan-w-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "orphan-w-0"}})
	sawCondition := false
	eventually(t, 30*time.Second, func() error {
		var m infrav1.ProxmoxTalosMachine
		err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: "orphan-w-0"}, &m)
		if client.IgnoreNotFound(err) != nil {
			return err
		}
		if err == nil {
			for _, c := range m.Status.Conditions {
				if c.Reason == infrav1.OwnerMachineNotFoundReason {
					sawCondition = true
				}
			}
			return fmt.Errorf("machine not deleted: %s", condSummary(m.Status.Conditions))
		}
		return nil
	})
	if vms := f.vmsOf("orphan-w-0"); len(vms) != 0 {
		t.Fatalf("VM %d left", vms[0].VMID)
	}
	t.Logf("OwnerMachineNotFound condition observed: %v", sawCondition)
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}

// TestInfraClusterGoneNamesVMLeftBehind: the ProxmoxTalosCluster was force-removed
// (finalizer stripped) before its machines. Nothing can delete the VM any more; the
// machine is released with a Warning event that names the VM left behind.
func TestInfraClusterGoneNamesVMLeftBehind(t *testing.T) {
	f := newFixture(t, "nocluster")
	m := startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	f.createMachine("nocluster-w-0", machineOpts{})
	f.waitProvisioned(60*time.Second, "nocluster-w-0")
	m.stop()
	ctx := context.Background()
	ptm := f.ptm("nocluster-w-0")

	var infra infrav1.ProxmoxTalosCluster
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &infra); err != nil {
		t.Fatal(err)
	}
	base := infra.DeepCopy()
	infra.Finalizers = nil
	if err := k8s.Patch(ctx, &infra, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	deleteObj(t, &infra)

	startManager(t)
	deleteObj(t, ptm)
	want := fmt.Sprintf("VM %d", *ptm.Spec.VMID)
	eventually(t, 30*time.Second, func() error {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace(f.ns)); err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Reason == "InfrastructureClusterGone" && ev.Type == "Warning" && strings.Contains(ev.Note, want) {
				return nil
			}
		}
		return fmt.Errorf("no InfrastructureClusterGone event naming %s", want)
	})
	vms := f.vmsOf("nocluster-w-0")
	if len(vms) != 1 {
		t.Fatalf("want the VM left behind, got %v", vms)
	}
	// Clean up by hand, as the event asks.
	if err := testPVE(t).DeleteVM(ctx, vms[0].Node, vms[0].VMID); err != nil {
		t.Fatal(err)
	}
	for _, v := range ptm.Spec.OwnedVolumes {
		_ = testPVE(t).DeleteVolume(ctx, v.Node, v.VolID)
	}
}
