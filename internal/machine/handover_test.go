package machine

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
)

// handoverEnv is a machine "w-0" whose VM 4600 runs on pve1, with one address claimed
// from a cluster pool (claim and IPAddress owned by the machine, as ClaimFromPool makes
// them), stored in the fake management API.
func handoverEnv(t *testing.T, after time.Duration) (*simEnv, *Scope) {
	t.Helper()
	e := newSimEnv(t, 5*time.Millisecond)
	e.r.Timing.NodeLossHandoverAfter = after
	e.createVM("pve1", 4600, "w-0", true, true)
	s := e.scope("pve1", 4600)
	s.InfraCluster.ObjectMeta = metav1.ObjectMeta{Name: "lab", Namespace: "ns", UID: "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a"}
	s.PTM.Labels = map[string]string{clusterv1.ClusterNameLabel: "lab"}
	s.PTM.Spec.IPAddresses = []infrav1.AllocatedAddress{{Device: "net0", Address: "127.10.2.7/8"}}
	ctx := context.Background()
	if err := e.r.Client.Create(ctx, s.PTM.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	owner := []metav1.OwnerReference{{APIVersion: infrav1.GroupVersion.String(), Kind: "ProxmoxTalosMachine", Name: "w-0", UID: s.PTM.UID}}
	labels := map[string]string{clusterv1.ClusterNameLabel: "lab", ipam.OwnerUIDLabel: testUUID, ipam.PoolLabel: "nodes"}
	for _, o := range []client.Object{
		&ipamv1.IPAddressClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "w-0-net0-ipv4", Labels: labels, OwnerReferences: owner}},
		&ipamv1.IPAddress{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "lab-nodes-127-10-2-7", Labels: labels, OwnerReferences: owner},
			Spec: ipamv1.IPAddressSpec{ClaimRef: ipamv1.IPAddressClaimReference{Name: "w-0-net0-ipv4"}, Address: "127.10.2.7", Prefix: ptr.To(int32(8))}},
	} {
		if err := e.r.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	return e, s
}

func (e *simEnv) ipamOwners(g Gomega) []string {
	ctx := context.Background()
	var owners []string
	var claims ipamv1.IPAddressClaimList
	g.Expect(e.r.Client.List(ctx, &claims)).To(Succeed())
	for _, c := range claims.Items {
		for _, o := range c.OwnerReferences {
			owners = append(owners, "claim:"+o.Kind+"/"+o.Name)
		}
	}
	var addrs ipamv1.IPAddressList
	g.Expect(e.r.Client.List(ctx, &addrs)).To(Succeed())
	for _, a := range addrs.Items {
		for _, o := range a.OwnerReferences {
			owners = append(owners, "address:"+o.Kind+"/"+o.Name)
		}
	}
	return owners
}

// TestNodeLossHandover: the VM's Proxmox node stays offline while the machine is deleted.
// After the configured time the deletion is handed over: a successor holds the VM's
// identity and the address claims, and the machine is released (Cluster API replaces it).
// The successor never hands over again; once the node answers it destroys the VM and
// releases the address. A pass of the machine that finds the successor already made
// (an interrupted hand-over) finishes it without touching the VM.
func TestNodeLossHandover(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	e, s := handoverEnv(t, 300*time.Millisecond)
	e.sim.SetNodeOnline("pve1", false)

	// Not yet: the condition says what will happen and when.
	_, err := e.r.ReconcileDelete(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(controllerutil.ContainsFinalizer(s.PTM, infrav1.MachineFinalizer)).To(BeTrue())
	c := conditionOf(s, infrav1.VMProvisionedCondition)
	g.Expect(c.Reason).To(Equal(infrav1.NodeOfflineReason))
	g.Expect(c.Message).To(And(ContainSubstring("pve1"), ContainSubstring("handed over to w-0-offline"), ContainSubstring("300ms")))
	g.Expect(e.r.Client.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "w-0-offline"}, &infrav1.ProxmoxTalosMachine{})).
		To(Satisfy(apierrors.IsNotFound), "no successor before the time is up")

	time.Sleep(350 * time.Millisecond)
	_, err = e.r.ReconcileDelete(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(controllerutil.ContainsFinalizer(s.PTM, infrav1.MachineFinalizer)).To(BeFalse(), "the machine is released")
	c = conditionOf(s, infrav1.VMProvisionedCondition)
	g.Expect(c.Reason).To(Equal(infrav1.VMHandedOverReason))
	g.Expect(c.Message).To(And(ContainSubstring("VM 4600"), ContainSubstring("127.10.2.7/8"), ContainSubstring("w-0-offline")))
	g.Expect(e.events()).To(ContainElement(ContainSubstring(infrav1.VMHandedOverReason)))
	_, ok := e.vm(4600)
	g.Expect(ok).To(BeTrue(), "the VM is not forgotten: it is still there, with its successor")

	succ := &infrav1.ProxmoxTalosMachine{}
	g.Expect(e.r.Client.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "w-0-offline"}, succ)).To(Succeed())
	g.Expect(succ.DeletionTimestamp.IsZero()).To(BeFalse(), "the successor is created to be deleted")
	g.Expect(succ.Annotations).To(HaveKeyWithValue(infrav1.HandedOverFromAnnotation, "w-0"))
	g.Expect(succ.Labels).To(HaveKeyWithValue(clusterv1.ClusterNameLabel, "lab"))
	g.Expect(succ.Spec.SMBIOSUUID).To(Equal(testUUID))
	g.Expect(ptr.Deref(succ.Spec.VMID, 0)).To(Equal(int32(4600)))
	g.Expect(succ.Spec.Node).To(Equal("pve1"))
	g.Expect(succ.OwnerReferences).To(ConsistOf(HaveField("Kind", "ProxmoxTalosCluster")))
	g.Expect(e.ipamOwners(g)).To(ConsistOf("claim:ProxmoxTalosMachine/w-0-offline", "address:ProxmoxTalosMachine/w-0-offline"),
		"the address stays reserved, by the successor")

	// An interrupted hand-over: a pass of the machine that still has its finalizer finds
	// the successor and finishes, even with the node back, without deleting anything itself.
	e.sim.SetNodeOnline("pve1", true)
	again := e.scope("pve1", 4600)
	again.InfraCluster.ObjectMeta = s.InfraCluster.ObjectMeta
	_, err = e.r.ReconcileDelete(ctx, again)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(controllerutil.ContainsFinalizer(again.PTM, infrav1.MachineFinalizer)).To(BeFalse())
	_, ok = e.vm(4600)
	g.Expect(ok).To(BeTrue(), "the successor, not the machine, deletes the VM")
	e.sim.SetNodeOnline("pve1", false)

	// The successor (no owner Machine) waits for the node and never hands over again.
	ss := NewScope(s.Cluster, s.InfraCluster, nil, succ, e.pve)
	time.Sleep(350 * time.Millisecond)
	for range 3 {
		_, err = e.r.ReconcileDelete(ctx, ss)
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(controllerutil.ContainsFinalizer(succ, infrav1.MachineFinalizer)).To(BeTrue())
	g.Expect(conditionOf(ss, infrav1.VMProvisionedCondition).Reason).To(Equal(infrav1.NodeOfflineReason))
	g.Expect(e.r.Client.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "w-0-offline-offline"}, &infrav1.ProxmoxTalosMachine{})).
		To(Satisfy(apierrors.IsNotFound))

	// The node answers: the successor recognises the VM by the original machine's tag and
	// the uuid, destroys it and releases the address.
	e.sim.SetNodeOnline("pve1", true)
	e.deleteUntil(ss, 5000, nil)
	_, ok = e.vm(4600)
	g.Expect(ok).To(BeFalse(), "the VM is destroyed once its node answers")
	g.Expect(e.ipamOwners(g)).To(BeEmpty(), "the address is released after the VM is gone")
}

// TestNodeLossHandoverOff: with the hand-over off (0) the deletion waits for the node as
// before, however long it stays offline.
func TestNodeLossHandoverOff(t *testing.T) {
	g := NewWithT(t)
	e, s := handoverEnv(t, 0)
	e.sim.SetNodeOnline("pve1", false)
	for range 3 {
		_, err := e.r.ReconcileDelete(context.Background(), s)
		g.Expect(err).NotTo(HaveOccurred())
		time.Sleep(10 * time.Millisecond)
	}
	g.Expect(controllerutil.ContainsFinalizer(s.PTM, infrav1.MachineFinalizer)).To(BeTrue())
	g.Expect(conditionOf(s, infrav1.VMProvisionedCondition).Message).To(ContainSubstring(infrav1.AbandonVMAnnotation))
	g.Expect(e.ipamOwners(g)).To(ConsistOf("claim:ProxmoxTalosMachine/w-0", "address:ProxmoxTalosMachine/w-0"))
}
