package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// fakeIPAMProvider does what an IPAM provider (for example the in-cluster one) does for
// claims on its pool: it creates an IPAddress and points the claim at it. It hands out
// 127.10.9.<n> in claim order.
func fakeIPAMProvider(ctx context.Context, ns string, pool ipamv1.IPPoolReference) {
	next := 1
	go func() {
		for ctx.Err() == nil {
			var claims ipamv1.IPAddressClaimList
			if err := k8s.List(ctx, &claims, client.InNamespace(ns)); err == nil {
				for i := range claims.Items {
					cl := &claims.Items[i]
					if cl.Spec.PoolRef != pool || cl.Status.AddressRef.Name != "" || !cl.DeletionTimestamp.IsZero() {
						continue
					}
					addr := &ipamv1.IPAddress{
						ObjectMeta: metav1.ObjectMeta{Name: cl.Name, Namespace: ns},
						Spec: ipamv1.IPAddressSpec{
							ClaimRef: ipamv1.IPAddressClaimReference{Name: cl.Name},
							PoolRef:  pool,
							Address:  fmt.Sprintf("127.10.9.%d", next),
							Prefix:   ptr.To[int32](24),
							Gateway:  "127.10.9.254",
						},
					}
					if err := k8s.Create(ctx, addr); err != nil {
						continue
					}
					next++
					base := cl.DeepCopy()
					cl.Status.AddressRef.Name = addr.Name
					_ = k8s.Status().Patch(ctx, cl, client.MergeFrom(base))
				}
			}
			// A provider releases the address of a deleted claim (garbage collection through
			// an owner reference does the same in a real cluster; envtest runs no GC).
			var addrs ipamv1.IPAddressList
			if err := k8s.List(ctx, &addrs, client.InNamespace(ns)); err == nil {
				for i := range addrs.Items {
					a := &addrs.Items[i]
					if a.Spec.PoolRef != pool {
						continue
					}
					var cl ipamv1.IPAddressClaim
					if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: a.Spec.ClaimRef.Name}, &cl); apierrors.IsNotFound(err) {
						_ = k8s.Delete(ctx, a)
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
}

// TestAddressesFromAnIPAMProvider: a NIC whose IPv4 comes from a Cluster API IPAM pool gets
// the provider's address through an IPAddressClaim, and the claim goes with the machine.
func TestAddressesFromAnIPAMProvider(t *testing.T) {
	f := newFixture(t, "ipam")
	startManager(t)
	f.createCluster(nil)
	f.markInfrastructureProvisioned()
	pool := ipamv1.IPPoolReference{APIGroup: "ipam.cluster.x-k8s.io", Kind: "InClusterIPPool", Name: "external"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fakeIPAMProvider(ctx, f.ns, pool)

	f.createMachine("ipam-w-0", machineOpts{ipv4: &infrav1.AddressSource{IPAMPoolRef: &pool}})
	f.waitProvisioned(60*time.Second, "ipam-w-0")

	m := f.ptm("ipam-w-0")
	if len(m.Spec.IPAddresses) != 1 || m.Spec.IPAddresses[0].Address != "127.10.9.1/24" || m.Spec.IPAddresses[0].Gateway != "127.10.9.254" {
		t.Fatalf("ipAddresses = %+v, want 127.10.9.1/24 via 127.10.9.254 from the IPAM provider", m.Spec.IPAddresses)
	}
	if vms := f.vmsOf("ipam-w-0"); len(vms) != 1 {
		t.Fatalf("%d VMs, want 1", len(vms))
	}

	deleteObj(t, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: "ipam-w-0"}})
	deleteObj(t, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: f.cluster}})
	f.waitAllGone()
	var claims ipamv1.IPAddressClaimList
	if err := k8s.List(context.Background(), &claims, client.InNamespace(f.ns)); err != nil {
		t.Fatal(err)
	}
	if len(claims.Items) != 0 {
		t.Fatalf("claims left: %d", len(claims.Items))
	}
}
