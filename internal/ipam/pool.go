// Package ipam hands out static addresses from a ProxmoxTalosCluster's spec.ipPools and
// from Cluster API IPAM providers.
//
// Addresses from a cluster pool are claimed by creating a Cluster API IPAddress whose
// name is derived from the pool and the address (<cluster>-<pool>-<address>). The API
// server's name uniqueness is the lock: two machines racing for one address cannot both
// create the object, the loser gets AlreadyExists and tries the next address. No
// in-process mutex is needed, so it also holds across controller restarts and replicas.
package ipam

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"strings"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// ErrPoolExhausted means every address of the pool is taken.
var ErrPoolExhausted = errors.New("address pool exhausted")

// Addresses yields every address of the pool in the order the entries list them:
// single addresses, inclusive ranges (a-b) and CIDRs (every address of the block).
func Addresses(pool infrav1.IPPool) (iter.Seq[netip.Addr], error) {
	spans, err := poolSpans(pool)
	if err != nil {
		return nil, err
	}
	return func(yield func(netip.Addr) bool) {
		for _, s := range spans {
			for a := s.from; a.IsValid() && !s.to.Less(a); a = a.Next() {
				if !yield(a) {
					return
				}
			}
		}
	}, nil
}

type span struct{ from, to netip.Addr }

// poolSpans parses the pool's entries into inclusive ranges.
func poolSpans(pool infrav1.IPPool) ([]span, error) {
	spans := make([]span, 0, len(pool.Addresses))
	for _, entry := range pool.Addresses {
		entry = strings.TrimSpace(entry)
		switch {
		case strings.Contains(entry, "/"):
			p, err := netip.ParsePrefix(entry)
			if err != nil {
				return nil, fmt.Errorf("pool %s: %q: %w", pool.Name, entry, err)
			}
			p = p.Masked()
			spans = append(spans, span{p.Addr(), lastAddr(p)})
		case strings.Contains(entry, "-"):
			from, to, _ := strings.Cut(entry, "-")
			a, err := netip.ParseAddr(strings.TrimSpace(from))
			if err != nil {
				return nil, fmt.Errorf("pool %s: %q: %w", pool.Name, entry, err)
			}
			b, err := netip.ParseAddr(strings.TrimSpace(to))
			if err != nil {
				return nil, fmt.Errorf("pool %s: %q: %w", pool.Name, entry, err)
			}
			if a.BitLen() != b.BitLen() || b.Less(a) {
				return nil, fmt.Errorf("pool %s: %q is not an ascending range of one family", pool.Name, entry)
			}
			spans = append(spans, span{a, b})
		default:
			a, err := netip.ParseAddr(entry)
			if err != nil {
				return nil, fmt.Errorf("pool %s: %q: %w", pool.Name, entry, err)
			}
			spans = append(spans, span{a, a})
		}
	}
	return spans, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - uint(i%8))
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// FirstFree returns the first address of the pool that is not in used.
func FirstFree(pool infrav1.IPPool, used map[netip.Addr]bool) (netip.Addr, error) {
	all, err := Addresses(pool)
	if err != nil {
		return netip.Addr{}, err
	}
	for a := range all {
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: pool %s", ErrPoolExhausted, pool.Name)
}

// AddressObjectName is the name of the IPAddress object that claims addr from a cluster
// pool. It is the same for every claimant, which is what makes claiming race-free. IPv6
// addresses are written out in full so the name never ends in a dash.
func AddressObjectName(cluster, pool string, addr netip.Addr) string {
	var s string
	if addr.Is4() {
		s = strings.ReplaceAll(addr.String(), ".", "-")
	} else {
		s = strings.ReplaceAll(addr.StringExpanded(), ":", "-")
	}
	return cluster + "-" + pool + "-" + s
}

// FindPool returns the named pool of the cluster.
func FindPool(cluster *infrav1.ProxmoxTalosCluster, name string) (infrav1.IPPool, bool) {
	for _, p := range cluster.Spec.IPPools {
		if p.Name == name {
			return p, true
		}
	}
	return infrav1.IPPool{}, false
}

// PoolContaining returns the cluster pool whose addresses include addr. It compares
// ranges, so a large IPv6 CIDR costs nothing.
func PoolContaining(pools []infrav1.IPPool, addr netip.Addr) (infrav1.IPPool, bool) {
	for _, p := range pools {
		spans, err := poolSpans(p)
		if err != nil {
			continue
		}
		for _, s := range spans {
			if s.from.BitLen() == addr.BitLen() && !addr.Less(s.from) && !s.to.Less(addr) {
				return p, true
			}
		}
	}
	return infrav1.IPPool{}, false
}
