package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

func (f *fixture) infra() *infrav1.ProxmoxTalosCluster {
	f.t.Helper()
	var c infrav1.ProxmoxTalosCluster
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &c); err != nil {
		f.t.Fatal(err)
	}
	return &c
}

func (f *fixture) waitClusterCondition(t string, reason string, contains string) *metav1.Condition {
	f.t.Helper()
	var got *metav1.Condition
	eventually(f.t, 30*time.Second, func() error {
		got = conditions.Get(f.infra(), t)
		if got == nil || got.Reason != reason || !strings.Contains(got.Message, contains) {
			return fmt.Errorf("%s = %+v, want reason %s mentioning %q", t, got, reason, contains)
		}
		return nil
	})
	return got
}

// TestEndpointInsideANodePoolIsReserved: a fixed VIP that is the first address of the
// node pool is reserved for the cluster before any machine claims, so the machines get
// other addresses; deleting the cluster releases the reservation.
func TestEndpointInsideANodePoolIsReserved(t *testing.T) {
	f := newFixture(t, "vipres")
	startManager(t)
	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) {
		s.ControlPlaneEndpointPool = ""
		s.ControlPlaneEndpoint = clusterv1.APIEndpoint{Host: "127.10.0.10", Port: 6443} // the pool's first address
	})
	f.markInfrastructureProvisioned()
	f.createMachine("vipres-cp-0", machineOpts{controlPlane: true})
	f.createMachine("vipres-w-0", machineOpts{})
	f.waitProvisioned(60*time.Second, "vipres-cp-0", "vipres-w-0")
	for _, n := range []string{"vipres-cp-0", "vipres-w-0"} {
		for _, a := range f.ptm(n).Spec.IPAddresses {
			if strings.HasPrefix(a.Address, "127.10.0.10/") {
				t.Fatalf("machine %s was given the VIP %s", n, a.Address)
			}
		}
	}
	var held ipamv1.IPAddress
	name := ipam.AddressObjectName(f.cluster, "nodes", netip.MustParseAddr("127.10.0.10"))
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: name}, &held); err != nil {
		t.Fatalf("no reservation IPAddress %s: %v", name, err)
	}
	if held.Spec.ClaimRef.Name != f.cluster+"-control-plane-endpoint" {
		t.Fatalf("VIP held by %s, want the cluster's endpoint claim", held.Spec.ClaimRef.Name)
	}
	for _, n := range []string{"vipres-cp-0", "vipres-w-0"} {
		deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: n}})
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}

// TestEndpointHeldByAMachine: when the VIP is already held in the pool (by a machine, here
// planted), the cluster is not provisioned, says who holds it, and recovers once the
// address is free.
func TestEndpointHeldByAMachine(t *testing.T) {
	f := newFixture(t, "viptaken")
	startManager(t)
	vip := netip.MustParseAddr("127.10.0.11")
	taken := &ipamv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{Name: ipam.AddressObjectName(f.cluster, "nodes", vip)},
		Spec: ipamv1.IPAddressSpec{
			ClaimRef: ipamv1.IPAddressClaimReference{Name: "viptaken-w-9-net0-ipv4"},
			PoolRef:  ipamv1.IPPoolReference{APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosCluster", Name: f.cluster},
			Address:  vip.String(), Prefix: ptr.To[int32](16),
		},
	}
	f.create(taken)
	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) {
		s.ControlPlaneEndpointPool = ""
		s.ControlPlaneEndpoint = clusterv1.APIEndpoint{Host: vip.String(), Port: 6443}
	})
	f.waitClusterCondition(infrav1.ControlPlaneEndpointReadyCondition, infrav1.EndpointAddressInUseReason,
		"127.10.0.11 of pool nodes is held by IPAddressClaim viptaken-w-9-net0-ipv4")
	if ptr.Deref(f.infra().Status.Initialization.Provisioned, false) {
		t.Fatal("cluster provisioned although its VIP is a machine's address")
	}
	if !hasEvent(t, f.ns, f.cluster, infrav1.EndpointAddressInUseReason) {
		t.Error("no EndpointAddressInUse Warning event")
	}

	deleteObj(t, taken)
	f.markInfrastructureProvisioned()
	if !conditions.IsTrue(f.infra(), infrav1.ControlPlaneEndpointReadyCondition) {
		t.Fatalf("ControlPlaneEndpointReady not True: %s", condSummary(f.infra().Status.Conditions))
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}

// TestEndpointFromAnIPAMProvider: the VIP comes from a Cluster API IPAM pool through an
// IPAddressClaim; the claim goes with the cluster.
func TestEndpointFromAnIPAMProvider(t *testing.T) {
	f := newFixture(t, "vipipam")
	startManager(t)
	pool := ipamv1.IPPoolReference{APIGroup: "ipam.cluster.x-k8s.io", Kind: "InClusterIPPool", Name: "vips"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fakeIPAMProvider(ctx, f.ns, pool)
	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) {
		s.ControlPlaneEndpointPool = ""
		s.ControlPlaneEndpointIPAMPoolRef = &pool
	})
	f.markInfrastructureProvisioned()
	if got := f.infra().Spec.ControlPlaneEndpoint; got.Host != "127.10.9.1" || got.Port != 6443 {
		t.Fatalf("controlPlaneEndpoint = %+v, want 127.10.9.1:6443 from the IPAM provider", got)
	}
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
}

// TestCABundleThatDoesNotParse: a caBundle that is not PEM certificates stops the cluster
// with reason CABundleInvalid and a message that names the Secret and key but carries
// neither the bundle nor the token; a corrected bundle lets it continue.
func TestCABundleThatDoesNotParse(t *testing.T) {
	f := newFixture(t, "cabad")
	startManager(t)
	good := pve.CAPEM()
	truncated := good[:len(good)/2]
	f.create(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "cabad-bad-ca"},
		Data: map[string][]byte{
			infrav1.CredentialsTokenIDKey:     []byte(pvesim.DefaultTokenID),
			infrav1.CredentialsTokenSecretKey: []byte(pvesim.DefaultTokenSecret),
			infrav1.CredentialsCABundleKey:    truncated,
		},
	})
	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) { s.Proxmox.CredentialsRef.Name = "cabad-bad-ca" })
	c := f.waitClusterCondition(infrav1.CredentialsReadyCondition, infrav1.CABundleInvalidReason,
		"Secret "+f.ns+"/cabad-bad-ca key caBundle: caBundle is invalid: ")
	seen, _ := json.Marshal(c)
	for _, leak := range []string{string(truncated[30:60]), pvesim.DefaultTokenSecret} {
		if strings.Contains(string(seen), leak) {
			t.Fatalf("the condition repeats secret content: %s", seen)
		}
	}
	if ptr.Deref(f.infra().Status.Initialization.Provisioned, false) {
		t.Fatal("cluster provisioned with an unparseable caBundle")
	}
	if !hasEvent(t, f.ns, f.cluster, infrav1.CABundleInvalidReason) {
		t.Error("no CABundleInvalid Warning event")
	}

	var s corev1.Secret
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: "cabad-bad-ca"}, &s); err != nil {
		t.Fatal(err)
	}
	s.Data[infrav1.CredentialsCABundleKey] = good
	if err := k8s.Update(context.Background(), &s); err != nil {
		t.Fatal(err)
	}
	f.markInfrastructureProvisioned()
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	eventually(t, 30*time.Second, func() error {
		var left infrav1.ProxmoxTalosClusterList
		if err := k8s.List(context.Background(), &left, client.InNamespace(f.ns)); err != nil {
			return err
		}
		if len(left.Items) > 0 {
			return fmt.Errorf("cluster still there: %s", condSummary(left.Items[0].Status.Conditions))
		}
		return nil
	})
}
