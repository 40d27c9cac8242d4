package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

func collect(t *testing.T, pool infrav1.IPPool) []string {
	t.Helper()
	seq, err := Addresses(pool)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for a := range seq {
		out = append(out, a.String())
	}
	return out
}

func TestAddresses(t *testing.T) {
	tests := []struct {
		name    string
		entries []string
		want    []string
		wantErr bool
	}{
		{"single", []string{"127.10.0.1"}, []string{"127.10.0.1"}, false},
		{"range", []string{"127.10.0.1-127.10.0.3"}, []string{"127.10.0.1", "127.10.0.2", "127.10.0.3"}, false},
		{"cidr", []string{"127.10.0.4/30"}, []string{"127.10.0.4", "127.10.0.5", "127.10.0.6", "127.10.0.7"}, false},
		{"mixed in order", []string{"127.10.0.9", "127.10.0.1-127.10.0.2"}, []string{"127.10.0.9", "127.10.0.1", "127.10.0.2"}, false},
		{"ipv6 range", []string{"fd00::1-fd00::2"}, []string{"fd00::1", "fd00::2"}, false},
		{"descending range", []string{"127.10.0.3-127.10.0.1"}, nil, true},
		{"garbage", []string{"nope"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			pool := infrav1.IPPool{Name: "p", Addresses: tt.entries, Prefix: 24}
			if tt.wantErr {
				_, err := Addresses(pool)
				g.Expect(err).To(HaveOccurred())
				return
			}
			g.Expect(collect(t, pool)).To(Equal(tt.want))
		})
	}
}

func TestFirstFree(t *testing.T) {
	g := NewWithT(t)
	pool := infrav1.IPPool{Name: "p", Addresses: []string{"127.10.0.1-127.10.0.2"}, Prefix: 24}
	a, err := FirstFree(pool, map[netip.Addr]bool{netip.MustParseAddr("127.10.0.1"): true})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a.String()).To(Equal("127.10.0.2"))
	_, err = FirstFree(pool, map[netip.Addr]bool{netip.MustParseAddr("127.10.0.1"): true, netip.MustParseAddr("127.10.0.2"): true})
	g.Expect(errors.Is(err, ErrPoolExhausted)).To(BeTrue())
}

func TestAddressObjectName(t *testing.T) {
	g := NewWithT(t)
	g.Expect(AddressObjectName("c", "p", netip.MustParseAddr("127.10.0.1"))).To(Equal("c-p-127-10-0-1"))
	g.Expect(AddressObjectName("c", "p", netip.MustParseAddr("fd00::"))).To(Equal("c-p-fd00-0000-0000-0000-0000-0000-0000-0000"))
}

func scheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	if err := ipamv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := infrav1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func owner(name, uid string) Owner {
	m := &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: k8stypes.UID(uid)}}
	return Owner{Object: m, GVK: infrav1.GroupVersion.WithKind("ProxmoxTalosMachine"), Cluster: "c"}
}

// TestClaimFromPoolStableAndUnique: a claim gets the same address every time, and
// machines claiming concurrently never share one.
func TestClaimFromPoolStableAndUnique(t *testing.T) {
	g := NewWithT(t)
	c := fake.NewClientBuilder().WithScheme(scheme(t)).WithStatusSubresource(&ipamv1.IPAddressClaim{}).Build()
	pool := infrav1.IPPool{Name: "nodes", Addresses: []string{"127.10.0.1-127.10.0.8"}, Prefix: 24, Gateway: "127.10.0.254"}
	ctx := context.Background()

	first, err := ClaimFromPool(ctx, c, owner("m0", "u0"), "c", pool, "m0-net0-ipv4")
	g.Expect(err).NotTo(HaveOccurred())
	again, err := ClaimFromPool(ctx, c, owner("m0", "u0"), "c", pool, "m0-net0-ipv4")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again).To(Equal(first))
	g.Expect(first.Address.String()).To(Equal("127.10.0.1/24"))
	g.Expect(first.Gateway).To(Equal("127.10.0.254"))

	var wg sync.WaitGroup
	results := make([]Allocation, 7)
	errs := make([]error, 7)
	for i := range 7 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("m%d", i+1)
			results[i], errs[i] = ClaimFromPool(ctx, c, owner(name, "u"+name), "c", pool, name+"-net0-ipv4")
		}()
	}
	wg.Wait()
	seen := map[string]bool{first.Address.String(): true}
	for i := range results {
		g.Expect(errs[i]).NotTo(HaveOccurred())
		g.Expect(seen).NotTo(HaveKey(results[i].Address.String()))
		seen[results[i].Address.String()] = true
	}

	_, err = ClaimFromPool(ctx, c, owner("m9", "u9"), "c", pool, "m9-net0-ipv4")
	g.Expect(errors.Is(err, ErrPoolExhausted)).To(BeTrue())

	// Releasing gives the address back.
	done, err := Release(ctx, c, owner("m0", "u0").Object)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(done).To(BeFalse()) // something was deleted; the next call confirms
	done, err = Release(ctx, c, owner("m0", "u0").Object)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(done).To(BeTrue())
	got, err := ClaimFromPool(ctx, c, owner("m9", "u9"), "c", pool, "m9-net0-ipv4")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.Address.String()).To(Equal("127.10.0.1/24"))

	var list ipamv1.IPAddressList
	g.Expect(c.List(ctx, &list, client.InNamespace("ns"))).To(Succeed())
	g.Expect(list.Items).To(HaveLen(8))
}

// TestReserveKeepsTheVIPFromMachines: an endpoint reserved in a node pool is never handed
// to a machine; reserving again is a no-op; an address a machine already holds cannot be
// reserved, and the error names the holder.
func TestReserveKeepsTheVIPFromMachines(t *testing.T) {
	g := NewWithT(t)
	c := fake.NewClientBuilder().WithScheme(scheme(t)).WithStatusSubresource(&ipamv1.IPAddressClaim{}).Build()
	pool := infrav1.IPPool{Name: "nodes", Addresses: []string{"127.10.0.1-127.10.0.3"}, Prefix: 24}
	ctx := context.Background()
	cluster := Owner{Object: &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c", UID: "cluster-uid"}},
		GVK: infrav1.GroupVersion.WithKind("ProxmoxTalosCluster"), Cluster: "c"}
	vip := netip.MustParseAddr("127.10.0.1")

	g.Expect(Reserve(ctx, c, cluster, "c", pool, vip, "c-control-plane-endpoint")).To(Succeed())
	g.Expect(Reserve(ctx, c, cluster, "c", pool, vip, "c-control-plane-endpoint")).To(Succeed())

	a, err := ClaimFromPool(ctx, c, owner("m0", "u0"), "c", pool, "m0-net0-ipv4")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a.Address.Addr()).NotTo(Equal(vip))
	b, err := ClaimFromPool(ctx, c, owner("m1", "u1"), "c", pool, "m1-net0-ipv4")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(b.Address.Addr()).NotTo(Equal(vip))
	_, err = ClaimFromPool(ctx, c, owner("m2", "u2"), "c", pool, "m2-net0-ipv4")
	g.Expect(errors.Is(err, ErrPoolExhausted)).To(BeTrue(), "the VIP must not be handed out as the pool's last address")

	err = Reserve(ctx, c, cluster, "c", pool, a.Address.Addr(), "c-control-plane-endpoint")
	g.Expect(errors.Is(err, ErrAddressInUse)).To(BeTrue())
	g.Expect(err.Error()).To(ContainSubstring("127.10.0.2 of pool nodes is held by IPAddressClaim m0-net0-ipv4"))
}

func TestPoolContaining(t *testing.T) {
	g := NewWithT(t)
	pools := []infrav1.IPPool{
		{Name: "v4", Addresses: []string{"127.10.0.1-127.10.0.3", "127.10.1.0/24"}, Prefix: 16},
		{Name: "v6", Addresses: []string{"fd00::/64"}, Prefix: 64},
	}
	for addr, want := range map[string]string{"127.10.0.2": "v4", "127.10.1.255": "v4", "fd00::ffff:1": "v6", "127.10.0.4": "", "fd01::1": ""} {
		p, ok := PoolContaining(pools, netip.MustParseAddr(addr))
		g.Expect(ok).To(Equal(want != ""), addr)
		g.Expect(p.Name).To(Equal(want), addr)
	}
}
