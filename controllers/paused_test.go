package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/json"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// TestPausedClusterIsLeftAlone: while its Cluster is paused (as during clusterctl move) a
// machine gets the Paused condition and no Proxmox call creates anything for it; once
// unpaused it is provisioned. Afterwards nothing secret (token secret, bootstrap data) shows
// in the statuses or events the provider wrote.
func TestPausedClusterIsLeftAlone(t *testing.T) {
	f := newFixture(t, "paused")
	startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	ctx := context.Background()

	setPaused := func(paused bool) {
		t.Helper()
		var cl clusterv1.Cluster
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &cl); err != nil {
			t.Fatal(err)
		}
		base := cl.DeepCopy()
		cl.Spec.Paused = ptr.To(paused)
		if err := k8s.Patch(ctx, &cl, client.MergeFrom(base)); err != nil {
			t.Fatal(err)
		}
	}
	setPaused(true)
	f.createMachine("paused-w-0", machineOpts{})

	eventually(t, 30*time.Second, func() error {
		m := f.ptm("paused-w-0")
		if !conditions.IsTrue(m, infrav1.PausedCondition) {
			return fmt.Errorf("Paused condition not True yet: %s", condSummary(m.Status.Conditions))
		}
		return nil
	})
	// Give a running controller every chance to do something it should not.
	time.Sleep(2 * time.Second)
	m := f.ptm("paused-w-0")
	if m.Spec.Node != "" || m.Spec.VMID != nil || len(m.Spec.IPAddresses) > 0 {
		t.Fatalf("paused machine was worked on: node %q vmID %d addresses %v", m.Spec.Node, ptr.Deref(m.Spec.VMID, 0), m.Spec.IPAddresses)
	}
	if vms := f.vmsOf("paused-w-0"); len(vms) != 0 {
		t.Fatalf("paused machine got VMs: %+v", vms)
	}

	setPaused(false)
	f.waitProvisioned(60*time.Second, "paused-w-0")
	if m := f.ptm("paused-w-0"); conditions.IsTrue(m, infrav1.PausedCondition) {
		t.Fatalf("Paused condition still True after unpausing: %s", condSummary(m.Status.Conditions))
	}

	// No secret leaks into what users and log collectors see.
	var events corev1.EventList
	if err := k8s.List(ctx, &events, client.InNamespace(f.ns)); err != nil {
		t.Fatal(err)
	}
	if len(events.Items) == 0 {
		t.Fatal("the controllers emitted no events")
	}
	var infra infrav1.ProxmoxTalosCluster
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &infra); err != nil {
		t.Fatal(err)
	}
	seen, _ := json.Marshal([]any{events.Items, f.ptm("paused-w-0").Status, infra.Status})
	for _, secret := range []string{pvesim.DefaultTokenSecret, bootstrapToken} {
		if strings.Contains(string(seen), secret) {
			t.Fatalf("a secret (%.4s…) appears in events or status", secret)
		}
	}

	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "paused-w-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}
