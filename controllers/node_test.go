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

// TestWorkloadNode runs a second API server as the workload cluster. The machine's Node
// (found by name, or by InternalIP when the name differs) gets the machine's providerID,
// and once it is Ready the boot ISO, which holds the cluster's PKI, is ejected and deleted.
func TestWorkloadNode(t *testing.T) {
	f := newFixture(t, "wl")
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

	f.createMachine("wl-cp-0", machineOpts{controlPlane: true})
	f.createMachine("wl-w-0", machineOpts{})
	f.waitProvisioned(60*time.Second, "wl-cp-0", "wl-w-0")
	cp, w := f.ptm("wl-cp-0"), f.ptm("wl-w-0")
	wIP := strings.Split(w.Spec.IPAddresses[0].Address, "/")[0]

	// Talos registers Nodes without a providerID; the worker's Node has another name and
	// is found by its address.
	createNode(t, wc, "wl-cp-0", "")
	createNode(t, wc, "worker-with-other-name", wIP)
	for node, ptm := range map[string]*infrav1.ProxmoxTalosMachine{"wl-cp-0": cp, "worker-with-other-name": w} {
		eventually(t, 30*time.Second, func() error {
			var n corev1.Node
			if err := wc.Get(ctx, client.ObjectKey{Name: node}, &n); err != nil {
				return err
			}
			if n.Spec.ProviderID != ptm.Spec.ProviderID {
				return fmt.Errorf("Node %s providerID %q, want %q", node, n.Spec.ProviderID, ptm.Spec.ProviderID)
			}
			return nil
		})
	}
	// Not Ready yet: the ISO stays.
	if f.ptm("wl-cp-0").Status.BootISO == "" || !isoPresent(cp.Status.BootISO) {
		t.Fatal("boot ISO removed before the Node was Ready")
	}

	setNodeReady(t, wc, "wl-cp-0")
	eventually(t, 30*time.Second, func() error {
		m := f.ptm("wl-cp-0")
		c := conditions.Get(m, infrav1.BootISOReadyCondition)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != infrav1.BootISODeletedReason || m.Status.BootISO != "" {
			return fmt.Errorf("BootISOReady = %+v, bootISO %q", c, m.Status.BootISO)
		}
		if !conditions.IsTrue(m, infrav1.NodeReadyCondition) || m.Status.Step != infrav1.StepRunning {
			return fmt.Errorf("step %s, NodeReady %v", m.Status.Step, conditions.Get(m, infrav1.NodeReadyCondition))
		}
		return nil
	})
	if isoPresent(cp.Status.BootISO) {
		t.Errorf("boot ISO %s still in storage", cp.Status.BootISO)
	}
	vm, _ := pve.VM(int(*cp.Spec.VMID))
	if strings.Contains(vm.Config["ide2"], cp.Status.BootISO) {
		t.Errorf("boot ISO still attached: ide2=%q", vm.Config["ide2"])
	}
	if !isoPresent(w.Status.BootISO) {
		t.Error("the worker's ISO went away although its Node is not Ready")
	}
	if !conditions.IsTrue(f.ptm("wl-cp-0"), infrav1.ReadyCondition) {
		t.Errorf("Ready not True after the ISO was deleted: %s", condSummary(f.ptm("wl-cp-0").Status.Conditions))
	}

	for _, n := range []string{"wl-cp-0", "wl-w-0"} {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}

func isoPresent(volid string) bool {
	for _, v := range pve.Inventory().VolumesByContent("iso") {
		if v.VolID == volid {
			return true
		}
	}
	return false
}

func createNode(t *testing.T, wc client.Client, name, ip string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := wc.Create(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady", LastTransitionTime: metav1.Now()}}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	}
	if err := wc.Status().Update(context.Background(), n); err != nil {
		t.Fatal(err)
	}
}

func setNodeReady(t *testing.T, wc client.Client, name string) {
	t.Helper()
	var n corev1.Node
	if err := wc.Get(context.Background(), client.ObjectKey{Name: name}, &n); err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastTransitionTime: metav1.Now()}}
	if err := wc.Status().Update(context.Background(), &n); err != nil {
		t.Fatal(err)
	}
}
