package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// Labels put on every IPAddress and IPAddressClaim this provider creates.
const (
	// OwnerUIDLabel holds the UID of the object the address belongs to (a
	// ProxmoxTalosMachine or, for the control-plane endpoint, a ProxmoxTalosCluster), so
	// that release finds everything even if the owner's spec lost track of it.
	OwnerUIDLabel = "infrastructure.cluster.x-k8s.io/proxmox-talos-owner-uid"
	// PoolLabel holds the cluster pool name of addresses claimed from spec.ipPools.
	PoolLabel = "infrastructure.cluster.x-k8s.io/proxmox-talos-pool"
)

// ErrWaiting means an IPAM provider has not allocated the claimed address yet.
var ErrWaiting = errors.New("waiting for the IPAM provider to allocate an address")

// Owner is the object claimed addresses belong to.
type Owner struct {
	Object client.Object
	// GVK of Object (typed objects read from the API have an empty TypeMeta).
	GVK schema.GroupVersionKind
	// Cluster is the Cluster API cluster name.
	Cluster string
	// ID is the owner's identity for OwnerUIDLabel. Empty means the object's UID. A
	// ProxmoxTalosMachine passes the identity recorded in its spec, which survives
	// `clusterctl move` (the move gives every object a new UID, so a UID label would
	// no longer find the addresses to release).
	ID string
}

func (o Owner) id() string {
	if o.ID != "" {
		return o.ID
	}
	return string(o.Object.GetUID())
}

func (o Owner) ref() metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion: o.GVK.GroupVersion().String(),
		Kind:       o.GVK.Kind,
		Name:       o.Object.GetName(),
		UID:        o.Object.GetUID(),
	}
}

func (o Owner) labels(pool string) map[string]string {
	l := map[string]string{
		clusterv1.ClusterNameLabel: o.Cluster,
		OwnerUIDLabel:              o.id(),
	}
	if pool != "" {
		l[PoolLabel] = pool
	}
	return l
}

// Allocation is an address with what the node needs to use it.
type Allocation struct {
	Address    netip.Prefix
	Gateway    string
	DNSServers []string
}

// ClaimFromPool returns the address claim claimName holds in a cluster pool, claiming the
// first free one if it holds none. infraCluster names the ProxmoxTalosCluster the pool
// belongs to (the IPAddress poolRef).
func ClaimFromPool(ctx context.Context, c client.Client, owner Owner, infraCluster string, pool infrav1.IPPool, claimName string) (Allocation, error) {
	ns := owner.Object.GetNamespace()
	poolRef := ipamv1.IPPoolReference{APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosCluster", Name: infraCluster}
	if err := ensureClaim(ctx, c, owner, claimName, pool.Name, poolRef); err != nil {
		return Allocation{}, err
	}

	var existing ipamv1.IPAddressList
	if err := c.List(ctx, &existing, client.InNamespace(ns), client.MatchingLabels{clusterv1.ClusterNameLabel: owner.Cluster, PoolLabel: pool.Name}); err != nil {
		return Allocation{}, fmt.Errorf("listing addresses of pool %s: %w", pool.Name, err)
	}
	used := map[netip.Addr]bool{}
	for _, a := range existing.Items {
		addr, err := netip.ParseAddr(a.Spec.Address)
		if err != nil {
			continue
		}
		if a.Spec.ClaimRef.Name == claimName && a.DeletionTimestamp.IsZero() {
			return allocation(pool, addr), nil
		}
		used[addr] = true
	}

	all, err := Addresses(pool)
	if err != nil {
		return Allocation{}, err
	}
	for addr := range all {
		if used[addr] {
			continue
		}
		obj := &ipamv1.IPAddress{
			ObjectMeta: metav1.ObjectMeta{
				Namespace:       ns,
				Name:            AddressObjectName(owner.Cluster, pool.Name, addr),
				Labels:          owner.labels(pool.Name),
				OwnerReferences: []metav1.OwnerReference{owner.ref()},
			},
			Spec: ipamv1.IPAddressSpec{
				ClaimRef: ipamv1.IPAddressClaimReference{Name: claimName},
				PoolRef:  poolRef,
				Address:  addr.String(),
				Prefix:   ptr.To(pool.Prefix),
				Gateway:  pool.Gateway,
			},
		}
		err := c.Create(ctx, obj)
		if apierrors.IsAlreadyExists(err) {
			// Someone holds it (possibly this very claim, if our cache lags behind our
			// own earlier create): check before moving on, so a claim never holds two.
			var held ipamv1.IPAddress
			if getErr := c.Get(ctx, client.ObjectKeyFromObject(obj), &held); getErr == nil && held.Spec.ClaimRef.Name == claimName &&
				held.Labels[OwnerUIDLabel] == owner.id() {
				return allocation(pool, addr), nil
			}
			continue
		}
		if err != nil {
			return Allocation{}, fmt.Errorf("claiming %s from pool %s: %w", addr, pool.Name, err)
		}
		bindClaim(ctx, c, ns, claimName, obj.Name)
		return allocation(pool, addr), nil
	}
	return Allocation{}, fmt.Errorf("%w: pool %s has no free address", ErrPoolExhausted, pool.Name)
}

func allocation(pool infrav1.IPPool, addr netip.Addr) Allocation {
	return Allocation{
		Address:    netip.PrefixFrom(addr, int(pool.Prefix)),
		Gateway:    pool.Gateway,
		DNSServers: append([]string(nil), pool.DNSServers...),
	}
}

// ClaimFromProvider creates an IPAddressClaim against an IPAM provider's pool and returns
// the IPAddress the provider allocated, or ErrWaiting while there is none yet.
func ClaimFromProvider(ctx context.Context, c client.Client, owner Owner, poolRef ipamv1.IPPoolReference, claimName string) (Allocation, error) {
	if err := ensureClaim(ctx, c, owner, claimName, "", poolRef); err != nil {
		return Allocation{}, err
	}
	var claim ipamv1.IPAddressClaim
	if err := c.Get(ctx, client.ObjectKey{Namespace: owner.Object.GetNamespace(), Name: claimName}, &claim); err != nil {
		if apierrors.IsNotFound(err) {
			return Allocation{}, ErrWaiting
		}
		return Allocation{}, err
	}
	if claim.Status.AddressRef.Name == "" {
		return Allocation{}, ErrWaiting
	}
	var addr ipamv1.IPAddress
	if err := c.Get(ctx, client.ObjectKey{Namespace: claim.Namespace, Name: claim.Status.AddressRef.Name}, &addr); err != nil {
		if apierrors.IsNotFound(err) {
			return Allocation{}, ErrWaiting
		}
		return Allocation{}, err
	}
	ip, err := netip.ParseAddr(addr.Spec.Address)
	if err != nil || addr.Spec.Prefix == nil {
		return Allocation{}, fmt.Errorf("IPAddress %s has an invalid address or prefix", addr.Name)
	}
	return Allocation{Address: netip.PrefixFrom(ip, int(*addr.Spec.Prefix)), Gateway: addr.Spec.Gateway}, nil
}

func ensureClaim(ctx context.Context, c client.Client, owner Owner, name, pool string, poolRef ipamv1.IPPoolReference) error {
	claim := &ipamv1.IPAddressClaim{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       owner.Object.GetNamespace(),
			Name:            name,
			Labels:          owner.labels(pool),
			OwnerReferences: []metav1.OwnerReference{owner.ref()},
		},
		Spec: ipamv1.IPAddressClaimSpec{ClusterName: owner.Cluster, PoolRef: poolRef},
	}
	if err := c.Create(ctx, claim); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating IPAddressClaim %s: %w", name, err)
	}
	return nil
}

// bindClaim records the address in the claim's status, as an IPAM provider would, so
// tools that follow claims find it. It is informational: failures are ignored.
func bindClaim(ctx context.Context, c client.Client, ns, claimName, addressName string) {
	var claim ipamv1.IPAddressClaim
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: claimName}, &claim); err != nil {
		return
	}
	base := claim.DeepCopy()
	claim.Status.AddressRef.Name = addressName
	_ = c.Status().Patch(ctx, &claim, client.MergeFrom(base))
}

// Release deletes every IPAddress and IPAddressClaim this provider created for owner.
// It returns true once none is left.
func Release(ctx context.Context, c client.Client, owner client.Object) (bool, error) {
	return ReleaseIDs(ctx, c, owner.GetNamespace(), string(owner.GetUID()))
}

// ReleaseIDs deletes every IPAddress and IPAddressClaim in namespace ns whose
// OwnerUIDLabel is one of ids (see Owner.ID). It returns true once none is left.
func ReleaseIDs(ctx context.Context, c client.Client, ns string, ids ...string) (bool, error) {
	var addrs ipamv1.IPAddressList
	var claims ipamv1.IPAddressClaimList
	for _, id := range ids {
		if id == "" {
			continue
		}
		sel := client.MatchingLabels{OwnerUIDLabel: id}
		var a ipamv1.IPAddressList
		if err := c.List(ctx, &a, client.InNamespace(ns), sel); err != nil {
			return false, err
		}
		addrs.Items = append(addrs.Items, a.Items...)
		var cl ipamv1.IPAddressClaimList
		if err := c.List(ctx, &cl, client.InNamespace(ns), sel); err != nil {
			return false, err
		}
		claims.Items = append(claims.Items, cl.Items...)
	}
	for i := range addrs.Items {
		if err := c.Delete(ctx, &addrs.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			return false, err
		}
	}
	for i := range claims.Items {
		if err := c.Delete(ctx, &claims.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			return false, err
		}
	}
	return len(addrs.Items) == 0 && len(claims.Items) == 0, nil
}

// ErrAddressInUse means a specific address of a cluster pool is held by another claim.
var ErrAddressInUse = errors.New("address is already in use")

// Reserve makes claimName hold addr in a cluster pool, so that ClaimFromPool never hands
// it to a machine: the IPAddress object named after the pool and the address is the lock,
// exactly as for a machine's claim. It is used for a control-plane endpoint (the VIP)
// that lies inside a node pool. It returns ErrAddressInUse, naming the holder, when
// another claim got there first.
func Reserve(ctx context.Context, c client.Client, owner Owner, infraCluster string, pool infrav1.IPPool, addr netip.Addr, claimName string) error {
	ns := owner.Object.GetNamespace()
	key := client.ObjectKey{Namespace: ns, Name: AddressObjectName(owner.Cluster, pool.Name, addr)}
	var held ipamv1.IPAddress
	err := c.Get(ctx, key, &held)
	if err == nil {
		return checkHolder(&held, owner, claimName, pool, addr)
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading IPAddress %s: %w", key.Name, err)
	}
	poolRef := ipamv1.IPPoolReference{APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosCluster", Name: infraCluster}
	if err := ensureClaim(ctx, c, owner, claimName, pool.Name, poolRef); err != nil {
		return err
	}
	obj := &ipamv1.IPAddress{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       ns,
			Name:            key.Name,
			Labels:          owner.labels(pool.Name),
			OwnerReferences: []metav1.OwnerReference{owner.ref()},
		},
		Spec: ipamv1.IPAddressSpec{
			ClaimRef: ipamv1.IPAddressClaimReference{Name: claimName},
			PoolRef:  poolRef,
			Address:  addr.String(),
			Prefix:   ptr.To(pool.Prefix),
			Gateway:  pool.Gateway,
		},
	}
	err = c.Create(ctx, obj)
	if apierrors.IsAlreadyExists(err) {
		if err := c.Get(ctx, key, &held); err != nil {
			return fmt.Errorf("reading IPAddress %s: %w", key.Name, err)
		}
		return checkHolder(&held, owner, claimName, pool, addr)
	}
	if err != nil {
		return fmt.Errorf("reserving %s in pool %s: %w", addr, pool.Name, err)
	}
	bindClaim(ctx, c, ns, claimName, obj.Name)
	return nil
}

// checkHolder accepts the address when claimName holds it. The claim name is enough: the
// IPAddress is named after the cluster and the claim names are unique in the namespace,
// and unlike the owner UID label they survive `clusterctl move`.
func checkHolder(held *ipamv1.IPAddress, _ Owner, claimName string, pool infrav1.IPPool, addr netip.Addr) error {
	if held.Spec.ClaimRef.Name == claimName && held.DeletionTimestamp.IsZero() {
		return nil
	}
	return fmt.Errorf("%w: %s of pool %s is held by IPAddressClaim %s", ErrAddressInUse, addr, pool.Name, held.Spec.ClaimRef.Name)
}
