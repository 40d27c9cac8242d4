package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestReadyBeforeBootstrapData: a machine whose bootstrap data is not written yet (a worker
// while the control plane comes up) is placed, holds its addresses and has its image in
// storage, but no VM; waiting, its status stays unchanged (no pass rewrites it); once the
// data comes, only the boot ISO and the VM remain to be done.
func TestReadyBeforeBootstrapData(t *testing.T) {
	f := newFixture(t, "early")
	startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	ctx := context.Background()

	f.createMachine("early-0", machineOpts{noBootstrap: true})
	eventually(t, 60*time.Second, func() error {
		m := f.ptm("early-0")
		if m.Status.Step != infrav1.StepWaitingForBootstrapData {
			return fmt.Errorf("step %s, conditions %v", m.Status.Step, condSummary(m.Status.Conditions))
		}
		return nil
	})
	m := f.ptm("early-0")
	if m.Spec.Node == "" || len(m.Spec.IPAddresses) == 0 {
		t.Fatalf("not placed or no address before the bootstrap data: node %q, addresses %v", m.Spec.Node, m.Spec.IPAddresses)
	}
	if !conditions.IsTrue(m, infrav1.ImageReadyCondition) || len(imagesOfVersion(talosVersion)) == 0 {
		t.Fatalf("image not ready before the bootstrap data: %v", condSummary(m.Status.Conditions))
	}
	if vms := f.vmsOf("early-0"); len(vms) != 0 || m.Spec.VMID != nil {
		t.Fatalf("a VM (or VMID %v) before the bootstrap data: %v", m.Spec.VMID, vms)
	}

	// Waiting changes nothing: touch the machine (an event, as Cluster API's updates of the
	// Machine are) and see the status keep its content.
	var machine clusterv1.Machine
	base := m.DeepCopy()
	m.Annotations = map[string]string{"test/touch": "1"}
	if err := k8s.Patch(ctx, m, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	rv := m.ResourceVersion
	time.Sleep(2 * time.Second)
	if got := f.ptm("early-0"); got.ResourceVersion != rv {
		t.Fatalf("a waiting pass rewrote the status: %v", condSummary(got.Status.Conditions))
	}

	f.create(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "early-0-bootstrap-data", Labels: map[string]string{clusterv1.ClusterNameLabel: f.cluster}},
		Data:       map[string][]byte{"value": []byte("version: v1alpha1\nmachine:\n  type: worker\n  token: " + bootstrapToken + "\n")},
	})
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: "early-0"}, &machine); err != nil {
		t.Fatal(err)
	}
	mbase := machine.DeepCopy()
	machine.Spec.Bootstrap.DataSecretName = ptr.To("early-0-bootstrap-data")
	if err := k8s.Patch(ctx, &machine, client.MergeFrom(mbase)); err != nil {
		t.Fatal(err)
	}
	f.waitProvisioned(60*time.Second, "early-0")
	if vms := f.vmsOf("early-0"); len(vms) != 1 || vms[0].Node != m.Spec.Node {
		t.Fatalf("want one VM on the node chosen before the data (%s), got %v", m.Spec.Node, vms)
	}

	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "early-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}
