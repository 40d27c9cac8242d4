package cluster

import (
	"context"
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
)

func endpointScope(mutate func(*infrav1.ProxmoxTalosClusterSpec)) *Scope {
	infra := &infrav1.ProxmoxTalosCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c", UID: "uid-c"},
		Spec: infrav1.ProxmoxTalosClusterSpec{
			IPPools: []infrav1.IPPool{{Name: "nodes", Addresses: []string{"127.10.0.10-127.10.0.12"}, Prefix: 16}},
		},
	}
	mutate(&infra.Spec)
	return NewScope(&clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"}}, infra)
}

func fakeClient(t *testing.T, objs ...client.Object) client.Client {
	s := runtime.NewScheme()
	if err := ipamv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := infrav1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).WithStatusSubresource(&ipamv1.IPAddressClaim{}).Build()
}

// TestEndpointReservation: a fixed VIP in a node pool is reserved for the cluster (and no
// machine can then claim it); a VIP a machine holds stops the cluster with
// EndpointAddressInUse naming the holder; a VIP outside every pool needs nothing.
func TestEndpointReservation(t *testing.T) {
	ctx := context.Background()
	vipName := ipam.AddressObjectName("c", "nodes", netip.MustParseAddr("127.10.0.10"))
	tests := []struct {
		name       string
		host       string
		planted    *ipamv1.IPAddress
		wantDone   bool
		wantReason string
		wantHeldBy string
	}{
		{"VIP in the pool", "127.10.0.10", nil, true, infrav1.ReadyReason, "c-control-plane-endpoint"},
		{"VIP outside the pools", "127.10.3.1", nil, true, infrav1.ReadyReason, ""},
		{"VIP a machine holds", "127.10.0.10", &ipamv1.IPAddress{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: vipName},
			Spec:       ipamv1.IPAddressSpec{ClaimRef: ipamv1.IPAddressClaimReference{Name: "w-0-net0-ipv4"}, Address: "127.10.0.10", Prefix: ptr.To[int32](16)},
		}, false, infrav1.EndpointAddressInUseReason, "w-0-net0-ipv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			var objs []client.Object
			if tt.planted != nil {
				objs = append(objs, tt.planted)
			}
			c := fakeClient(t, objs...)
			r := &Reconciler{Client: c}
			s := endpointScope(func(spec *infrav1.ProxmoxTalosClusterSpec) { spec.ControlPlaneEndpoint.Host = tt.host })
			done, _, err := r.reconcileEndpoint(ctx, s)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(done).To(Equal(tt.wantDone))
			cond := conditions.Get(s.InfraCluster, infrav1.ControlPlaneEndpointReadyCondition)
			g.Expect(cond.Reason).To(Equal(tt.wantReason), cond.Message)
			var held ipamv1.IPAddress
			err = c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: vipName}, &held)
			if tt.wantHeldBy == "" {
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(held.Spec.ClaimRef.Name).To(Equal(tt.wantHeldBy))
			if !tt.wantDone {
				g.Expect(cond.Message).To(ContainSubstring("127.10.0.10 of pool nodes is held by IPAddressClaim w-0-net0-ipv4"))
				return
			}
			// No machine gets the reserved address.
			m := ipam.Owner{Object: &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "m", UID: "uid-m"}},
				GVK: infrav1.GroupVersion.WithKind("ProxmoxTalosMachine"), Cluster: "c"}
			a, err := ipam.ClaimFromPool(ctx, c, m, "c", s.Spec.IPPools[0], "m-net0-ipv4")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(a.Address.Addr().String()).To(Equal("127.10.0.11"))
		})
	}
}

// TestEndpointFromIPAMPool: the VIP comes from a Cluster API IPAM pool: the cluster waits
// for the provider's IPAddress, then records it.
func TestEndpointFromIPAMPool(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ref := ipamv1.IPPoolReference{APIGroup: "ipam.cluster.x-k8s.io", Kind: "InClusterIPPool", Name: "vips"}
	c := fakeClient(t)
	r := &Reconciler{Client: c}
	s := endpointScope(func(spec *infrav1.ProxmoxTalosClusterSpec) { spec.ControlPlaneEndpointIPAMPoolRef = &ref })

	done, _, err := r.reconcileEndpoint(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(done).To(BeFalse())
	g.Expect(conditions.Get(s.InfraCluster, infrav1.ControlPlaneEndpointReadyCondition).Reason).To(Equal(infrav1.WaitingForIPAMReason))

	// The IPAM provider allocates.
	var claim ipamv1.IPAddressClaim
	g.Expect(c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "c-control-plane-endpoint"}, &claim)).To(Succeed())
	g.Expect(claim.Spec.PoolRef).To(Equal(ref))
	g.Expect(c.Create(ctx, &ipamv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vip-1"},
		Spec:       ipamv1.IPAddressSpec{ClaimRef: ipamv1.IPAddressClaimReference{Name: claim.Name}, PoolRef: ref, Address: "127.10.9.1", Prefix: ptr.To[int32](24)},
	})).To(Succeed())
	claim.Status.AddressRef.Name = "vip-1"
	g.Expect(c.Status().Update(ctx, &claim)).To(Succeed())

	done, _, err = r.reconcileEndpoint(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(done).To(BeTrue())
	g.Expect(s.InfraCluster.Spec.ControlPlaneEndpoint).To(Equal(clusterv1.APIEndpoint{Host: "127.10.9.1", Port: 6443}))
}

// TestEndpointFromPoolSurvivesMove: the VIP allocated from a pool is found again by a
// cluster recreated with a new UID (as `clusterctl move` does): the same address, no
// second claim, and deletion's release finds the claim by the move-stable OwnerID.
func TestEndpointFromPoolSurvivesMove(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	c := fakeClient(t)
	r := &Reconciler{Client: c}
	s := endpointScope(func(spec *infrav1.ProxmoxTalosClusterSpec) { spec.ControlPlaneEndpointPool = "nodes" })
	done, _, err := r.reconcileEndpoint(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(done).To(BeTrue())
	vip := s.InfraCluster.Spec.ControlPlaneEndpoint.Host
	g.Expect(vip).NotTo(BeEmpty())

	moved := endpointScope(func(spec *infrav1.ProxmoxTalosClusterSpec) { spec.ControlPlaneEndpointPool = "nodes" })
	moved.InfraCluster.UID = "uid-after-move"
	done, _, err = r.reconcileEndpoint(ctx, moved)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(done).To(BeTrue())
	g.Expect(moved.InfraCluster.Spec.ControlPlaneEndpoint.Host).To(Equal(vip))
	var claims ipamv1.IPAddressClaimList
	g.Expect(c.List(ctx, &claims)).To(Succeed())
	g.Expect(claims.Items).To(HaveLen(1))

	released, err := ipam.ReleaseIDs(ctx, c, "ns", OwnerID(moved.InfraCluster), string(moved.InfraCluster.UID))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(released).To(BeFalse(), "the first call deletes, a later one confirms")
	g.Eventually(func() (bool, error) {
		return ipam.ReleaseIDs(ctx, c, "ns", OwnerID(moved.InfraCluster), string(moved.InfraCluster.UID))
	}).Should(BeTrue())
	g.Expect(c.List(ctx, &claims)).To(Succeed())
	g.Expect(claims.Items).To(BeEmpty())
}
