package machine

import (
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// TestVMSpecKeepsDeviceNames: a NIC named net2 in the machine spec is net2 on the VM, with
// the MAC the boot ISO's network config matches, even when net1 is absent.
func TestVMSpecKeepsDeviceNames(t *testing.T) {
	g := NewWithT(t)
	infra := &infrav1.ProxmoxTalosCluster{Spec: infrav1.ProxmoxTalosClusterSpec{Talos: infrav1.TalosImageSpec{Version: "v1.13.9"}}}
	ptm := &infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{Name: "w-0", Namespace: "ns", UID: "8b5e2f7a-0c1d-4e2f-9a3b-4c5d6e7f8a9b"},
		Spec: infrav1.ProxmoxTalosMachineSpec{
			Node: "pve1", VMID: ptr.To[int32](120), SMBIOSUUID: "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
			NetworkDevices: []infrav1.NetworkDevice{
				{Name: "net0", IPv4: &infrav1.AddressSource{FromPool: "nodes"}},
				{Name: "net2", Bridge: "vmbr1", VLAN: ptr.To[int32](30)},
			},
		},
	}
	s := NewScope(&clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Name: "lab"}}, infra,
		&clusterv1.Machine{ObjectMeta: metav1.ObjectMeta{Name: "w-0"}}, ptm, nil)
	s.imageVolID = "local:import/talos.qcow2"

	spec, err := (&Reconciler{}).vmSpec(s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(spec.Validate()).To(Succeed())
	p := spec.Params()
	g.Expect(p).To(HaveKey("net0"))
	g.Expect(p).NotTo(HaveKey("net1"))
	g.Expect(p["net2"]).To(HavePrefix("virtio=" + MACAddress(ptm, "net2")))
	g.Expect(p["net2"]).To(ContainSubstring("bridge=vmbr1,tag=30"))
}

// TestMovedMachineReportsItsVM: after `clusterctl move` the object arrives without status
// and its first pass waits for the cluster (VMProvisioned False). Once the cluster is
// provisioned again, the recorded VM (providerID set) makes VMProvisioned True without a
// Proxmox call, so the machine's Ready summary recovers.
func TestMovedMachineReportsItsVM(t *testing.T) {
	g := NewWithT(t)
	infra := &infrav1.ProxmoxTalosCluster{Spec: infrav1.ProxmoxTalosClusterSpec{Talos: infrav1.TalosImageSpec{Version: "v1.13.9"}}}
	ptm := &infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{Name: "w-0", Namespace: "ns", UID: "uid-after-move"},
		Spec: infrav1.ProxmoxTalosMachineSpec{
			Node: "pve2", VMID: ptr.To[int32](121), SMBIOSUUID: "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
			ProviderID: "proxmox://6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
		},
	}
	cluster := &clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Name: "lab"}}
	s := NewScope(cluster, infra, &clusterv1.Machine{ObjectMeta: metav1.ObjectMeta{Name: "w-0"}}, ptm, nil)
	r := &Reconciler{}

	out, err := r.waitForCluster(t.Context(), s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeFalse())
	g.Expect(conditions.IsFalse(ptm, infrav1.VMProvisionedCondition)).To(BeTrue())

	cluster.Status.Initialization.InfrastructureProvisioned = ptr.To(true)
	out, err = r.createVM(t.Context(), s) // s.PVE is nil: any Proxmox call would panic
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeTrue())
	c := conditions.Get(ptm, infrav1.VMProvisionedCondition)
	g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
	g.Expect(c.Message).To(Equal("VM 121 on node pve2"))
}
