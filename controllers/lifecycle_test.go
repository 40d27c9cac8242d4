package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	corev1 "k8s.io/api/core/v1"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
)

// TestClusterLifecycle: a cluster with three control planes and two workers is
// provisioned with exactly one VM per machine, the right addresses and providerIDs, the
// control planes spread over three nodes, and the Talos image transferred once.
func TestClusterLifecycle(t *testing.T) {
	f := newFixture(t, "life")
	startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()

	var infra infrav1.ProxmoxTalosCluster
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &infra); err != nil {
		t.Fatal(err)
	}
	if got := infra.Spec.ControlPlaneEndpoint; got.Host != "127.10.0.10" || got.Port != 6443 {
		t.Fatalf("endpoint = %+v, want 127.10.0.10:6443 from the pool", got)
	}
	var secret corev1.Secret
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster + "-proxmox"}, &secret); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(secret.Finalizers, infrav1.CredentialsFinalizer) || len(secret.OwnerReferences) != 1 {
		t.Fatalf("credentials Secret not adopted: finalizers %v owners %v", secret.Finalizers, secret.OwnerReferences)
	}

	sc, _ := imagefactory.NewSchematic(imagefactory.SchematicOptions{Extensions: infrav1.DefaultExtensions})
	id, _ := imagefactory.SchematicID(sc)
	ref := imagefactory.ImageRef{SchematicID: id, TalosVersion: talosVersion, Platform: "nocloud", Arch: "amd64"}
	downloadsBefore := factory.Downloads(ref.FactoryPath())

	names := []string{"life-cp-0", "life-cp-1", "life-cp-2", "life-w-0", "life-w-1"}
	for i, n := range names {
		f.createMachine(n, machineOpts{controlPlane: i < 3})
	}
	f.waitProvisioned(90*time.Second, names...)

	seenIPs := map[string]string{"127.10.0.10": "endpoint"}
	cpNodes := map[string]bool{}
	for i, n := range names {
		m := f.ptm(n)
		vms := f.vmsOf(n)
		if len(vms) != 1 {
			t.Fatalf("%s: %d VMs, want 1", n, len(vms))
		}
		vm := vms[0]
		if m.Spec.VMID == nil || int(*m.Spec.VMID) != vm.VMID || m.Spec.Node != vm.Node {
			t.Errorf("%s: spec records VM %v on %s, simulator has %d on %s", n, m.Spec.VMID, m.Spec.Node, vm.VMID, vm.Node)
		}
		if m.Spec.ProviderID != "proxmox://"+m.Spec.SMBIOSUUID || !strings.Contains(vm.Config["smbios1"], m.Spec.SMBIOSUUID) {
			t.Errorf("%s: providerID %q, smbios1 %q", n, m.Spec.ProviderID, vm.Config["smbios1"])
		}
		if vm.Status != "running" {
			t.Errorf("%s: VM is %s", n, vm.Status)
		}
		if len(m.Spec.IPAddresses) != 1 {
			t.Fatalf("%s: ipAddresses %v", n, m.Spec.IPAddresses)
		}
		ip := m.Spec.IPAddresses[0].Address
		addr := ip[:len(ip)-3] // strip /16
		if other, dup := seenIPs[addr]; dup {
			t.Errorf("%s: address %s also given to %s", n, addr, other)
		}
		seenIPs[addr] = n
		want := []clusterv1.MachineAddress{{Type: clusterv1.MachineInternalIP, Address: addr}, {Type: clusterv1.MachineHostName, Address: n}}
		if !slices.Equal(m.Status.Addresses, want) {
			t.Errorf("%s: addresses %v, want %v", n, m.Status.Addresses, want)
		}
		if m.Status.BootISO == "" {
			t.Errorf("%s: no boot ISO recorded", n)
		}
		if i < 3 {
			cpNodes[m.Spec.Node] = true
		}
	}
	if len(cpNodes) != 3 {
		t.Errorf("control planes on %d node(s), want 3: %v", len(cpNodes), cpNodes)
	}

	if n := factory.Downloads(ref.FactoryPath()) - downloadsBefore; n != 1 {
		t.Errorf("image %s downloaded %d times for 5 machines, want 1", ref.FactoryPath(), n)
	}

	// Delete everything, cluster first as Cluster API does (the cluster waits for its machines).
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	time.Sleep(300 * time.Millisecond)
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &infra); err != nil {
		t.Fatalf("ProxmoxTalosCluster went away while machines exist: %v", err)
	}
	for _, n := range names {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	f.waitAllGone()
}

func deleteObj(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Delete(context.Background(), obj); client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
}

// waitAllGone waits until the namespace holds no provider objects, no IP claims, and the
// simulator no VM, disk or boot ISO of the fixture's cluster.
func (f *fixture) waitAllGone() {
	f.t.Helper()
	eventually(f.t, 60*time.Second, f.anyLeft)
	f.checkSimulatorEmpty()
}

// anyLeft reports the first provider object, address or finalizer of the fixture that is
// still in the API server.
func (f *fixture) anyLeft() error {
	ctx := context.Background()
	var ptms infrav1.ProxmoxTalosMachineList
	if err := k8s.List(ctx, &ptms, client.InNamespace(f.ns)); err != nil {
		return err
	}
	if len(ptms.Items) > 0 {
		m := ptms.Items[0]
		return fmt.Errorf("%d ProxmoxTalosMachines left, e.g. %s: %s", len(ptms.Items), m.Name, condSummary(m.Status.Conditions))
	}
	var ptcs infrav1.ProxmoxTalosClusterList
	if err := k8s.List(ctx, &ptcs, client.InNamespace(f.ns)); err != nil {
		return err
	}
	if len(ptcs.Items) > 0 {
		return fmt.Errorf("ProxmoxTalosCluster left: %s", condSummary(ptcs.Items[0].Status.Conditions))
	}
	var addrs ipamv1.IPAddressList
	if err := k8s.List(ctx, &addrs, client.InNamespace(f.ns)); err != nil {
		return err
	}
	var claims ipamv1.IPAddressClaimList
	if err := k8s.List(ctx, &claims, client.InNamespace(f.ns)); err != nil {
		return err
	}
	if len(addrs.Items)+len(claims.Items) > 0 {
		return fmt.Errorf("%d IPAddresses and %d claims left", len(addrs.Items), len(claims.Items))
	}
	var secret corev1.Secret
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster + "-proxmox"}, &secret); err == nil && len(secret.Finalizers) > 0 {
		return fmt.Errorf("credentials Secret still has finalizers %v", secret.Finalizers)
	}
	return nil
}

// checkSimulatorEmpty fails the test for any VM, disk, boot ISO or Talos image of the
// fixture left in the simulator.
func (f *fixture) checkSimulatorEmpty() {
	f.t.Helper()
	inv := pve.Inventory()
	for _, vm := range inv.VMs {
		if hasTag(vm.Tags, "cluster-"+f.cluster) {
			f.t.Errorf("VM %d (%s) left", vm.VMID, vm.Name)
		}
	}
	for _, v := range inv.Volumes {
		if v.Content == "images" || (v.Content == "iso" && strings.Contains(v.VolID, "-"+f.ns+"-")) {
			f.t.Errorf("volume %s left", v.VolID)
		}
		// The last cluster using the image storage takes the Talos images with it (tests
		// run one at a time, so no other cluster is alive here).
		if _, err := imagefactory.ParseStorageName(v.VolID[strings.Index(v.VolID, "/")+1:]); v.Content == "import" && err == nil {
			f.t.Errorf("Talos image %s left", v.VolID)
		}
	}
}
