package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/cluster-api/util/kubeconfig"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// TestCloudControllerManagerProviderID runs a workload API server in which a Proxmox
// cloud-controller-manager (sergelogvinov's, default mode) names Nodes
// proxmox://<region>/<vmid>:
//   - while a Node carries the external cloud provider's uninitialized taint, the
//     controller leaves its providerID to the CCM (setting ours first would make the CCM fail
//     to parse it and keep the Node tainted);
//   - a CCM providerID naming the machine's VMID is adopted into spec.providerID, which is
//     what Cluster API matches Nodes by (Machine.spec.providerID is copied from it), and the
//     machine runs to Ready;
//   - a providerID naming another VMID is refused with a ProviderIDMismatch condition and a
//     Warning event; spec.providerID keeps its value.
func TestCloudControllerManagerProviderID(t *testing.T) {
	f := newFixture(t, "ccm")
	assets := testenv.RequireAssets(t)
	wenv := &envtest.Environment{BinaryAssetsDirectory: assets}
	wcfg, err := wenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wenv.Stop() })
	wc, err := client.New(wcfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	startManager(t)
	f.createCluster(nil)
	var cl clusterv1.Cluster
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &cl); err != nil {
		t.Fatal(err)
	}
	f.create(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: f.cluster + "-kubeconfig", Labels: map[string]string{clusterv1.ClusterNameLabel: f.cluster}},
		Type:       clusterv1.ClusterSecretType,
		Data:       map[string][]byte{"value": kubeconfig.FromEnvTestConfig(wcfg, &cl)},
	})
	f.markInfrastructureProvisioned()

	f.createMachine("ccm-cp-0", machineOpts{controlPlane: true})
	f.createMachine("ccm-w-0", machineOpts{})
	f.waitProvisioned(60*time.Second, "ccm-cp-0", "ccm-w-0")
	cp, w := f.ptm("ccm-cp-0"), f.ptm("ccm-w-0")
	if !strings.HasPrefix(cp.Spec.ProviderID, infrav1.ProviderIDPrefix+cp.Spec.SMBIOSUUID) {
		t.Fatalf("providerID before the Node: %q", cp.Spec.ProviderID)
	}

	// The kubelet registers with --cloud-provider=external: tainted, no providerID.
	createTaintedNode(t, wc, "ccm-cp-0")
	eventually(t, 30*time.Second, func() error {
		c := conditions.Get(f.ptm("ccm-cp-0"), infrav1.NodeReadyCondition)
		if c == nil || c.Reason != infrav1.WaitingForCloudControllerManagerReason {
			return fmt.Errorf("NodeReady = %+v, want reason %s", c, infrav1.WaitingForCloudControllerManagerReason)
		}
		return nil
	})
	var n corev1.Node
	if err := wc.Get(ctx, client.ObjectKey{Name: "ccm-cp-0"}, &n); err != nil {
		t.Fatal(err)
	}
	if n.Spec.ProviderID != "" {
		t.Fatalf("the controller set providerID %q on a Node awaiting its cloud-controller-manager", n.Spec.ProviderID)
	}

	// The CCM initializes the Node with its own form of the VM's identity.
	ccmID := fmt.Sprintf("proxmox://lab-region/%d", *cp.Spec.VMID)
	ccmInitialize(t, wc, "ccm-cp-0", ccmID)
	setNodeReady(t, wc, "ccm-cp-0")
	eventually(t, 30*time.Second, func() error {
		m := f.ptm("ccm-cp-0")
		if m.Spec.ProviderID != ccmID {
			return fmt.Errorf("spec.providerID %q, want the CCM's %q", m.Spec.ProviderID, ccmID)
		}
		if !conditions.IsTrue(m, infrav1.NodeReadyCondition) || m.Status.Step != infrav1.StepRunning || !conditions.IsTrue(m, infrav1.ReadyCondition) {
			return fmt.Errorf("step %s, conditions %s", m.Status.Step, condSummary(m.Status.Conditions))
		}
		return nil
	})
	if got := f.ptm("ccm-cp-0"); got.Spec.SMBIOSUUID != cp.Spec.SMBIOSUUID || *got.Spec.VMID != *cp.Spec.VMID {
		t.Errorf("identity changed while adopting the providerID: %+v", got.Spec)
	}
	if !hasEvent(t, f.ns, "ccm-cp-0", "ProviderIDAdopted") {
		t.Error("no ProviderIDAdopted event")
	}

	// A Node named like the worker but initialized for another VM is not the worker's.
	createTaintedNode(t, wc, "ccm-w-0")
	otherID := fmt.Sprintf("proxmox://lab-region/%d", *w.Spec.VMID+1000)
	ccmInitialize(t, wc, "ccm-w-0", otherID)
	eventually(t, 30*time.Second, func() error {
		c := conditions.Get(f.ptm("ccm-w-0"), infrav1.NodeReadyCondition)
		want := fmt.Sprintf("it names VMID %d in region \"lab-region\", this machine's VM is VMID %d", *w.Spec.VMID+1000, *w.Spec.VMID)
		if c == nil || c.Reason != infrav1.ProviderIDMismatchReason || !strings.Contains(c.Message, want) {
			return fmt.Errorf("NodeReady = %+v, want reason %s mentioning %q", c, infrav1.ProviderIDMismatchReason, want)
		}
		return nil
	})
	if got := f.ptm("ccm-w-0").Spec.ProviderID; got != w.Spec.ProviderID {
		t.Errorf("spec.providerID changed to %q for another VM's Node", got)
	}
	if !hasEvent(t, f.ns, "ccm-w-0", infrav1.ProviderIDMismatchReason) {
		t.Error("no ProviderIDMismatch Warning event")
	}

	for _, n := range []string{"ccm-cp-0", "ccm-w-0"} {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}

// createTaintedNode registers a Node the way a kubelet with --cloud-provider=external
// does: with the uninitialized taint from the start (never a moment without it, or the
// controller would rightly set its own providerID).
func createTaintedNode(t *testing.T, wc client.Client, name string) {
	t.Helper()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{
			Key: "node.cloudprovider.kubernetes.io/uninitialized", Value: "true", Effect: corev1.TaintEffectNoSchedule,
		}}},
	}
	if err := wc.Create(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady", LastTransitionTime: metav1.Now()}}
	if err := wc.Status().Update(context.Background(), n); err != nil {
		t.Fatal(err)
	}
}

// ccmInitialize does what the cloud-provider node controller does: set the providerID
// and drop the uninitialized taint, in one update.
func ccmInitialize(t *testing.T, wc client.Client, name, providerID string) {
	t.Helper()
	var n corev1.Node
	if err := wc.Get(context.Background(), client.ObjectKey{Name: name}, &n); err != nil {
		t.Fatal(err)
	}
	n.Spec.ProviderID = providerID
	n.Spec.Taints = nil
	if err := wc.Update(context.Background(), &n); err != nil {
		t.Fatal(err)
	}
}

// hasEvent waits up to 10s for an event with reason about the named object (events are
// sent asynchronously by the recorder).
func hasEvent(t *testing.T, ns, name, reason string) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var events corev1.EventList
		if err := k8s.List(context.Background(), &events, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Name == name && e.Reason == reason {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}
