package webhooks

import (
	"fmt"
	"net/netip"
	"strings"
)

// addressSet is the parsed form of an IPPool's addresses: a list of inclusive ranges of
// one family. It exists so overlap and membership checks need no expansion of large CIDRs.
type addressSet []addrRange

type addrRange struct{ first, last netip.Addr }

func (r addrRange) contains(a netip.Addr) bool {
	return r.first.Compare(a) <= 0 && a.Compare(r.last) <= 0
}

func (r addrRange) overlaps(o addrRange) bool {
	return r.first.Compare(o.last) <= 0 && o.first.Compare(r.last) <= 0
}

// parseAddressEntry parses one pool entry: an address, an inclusive range `a-b` or a CIDR.
func parseAddressEntry(entry string) (addrRange, error) {
	entry = strings.TrimSpace(entry)
	switch {
	case strings.Contains(entry, "/"):
		prefix, err := netip.ParsePrefix(entry)
		if err != nil {
			return addrRange{}, fmt.Errorf("%q is not a valid CIDR (want for example 10.0.1.0/29)", entry)
		}
		prefix = prefix.Masked()
		return addrRange{first: prefix.Addr(), last: lastAddr(prefix)}, nil
	case strings.Contains(entry, "-"):
		from, to, _ := strings.Cut(entry, "-")
		first, err1 := netip.ParseAddr(strings.TrimSpace(from))
		last, err2 := netip.ParseAddr(strings.TrimSpace(to))
		if err1 != nil || err2 != nil {
			return addrRange{}, fmt.Errorf("%q is not an IP address, a range (for example 10.0.1.1-10.0.1.3) or a CIDR", entry)
		}
		if first.Is4() != last.Is4() {
			return addrRange{}, fmt.Errorf("range %q mixes IPv4 and IPv6", entry)
		}
		if first.Compare(last) > 0 {
			return addrRange{}, fmt.Errorf("range %q is inverted: its first address is after its last", entry)
		}
		return addrRange{first: first, last: last}, nil
	default:
		a, err := netip.ParseAddr(entry)
		if err != nil {
			return addrRange{}, fmt.Errorf("%q is not an IP address, a range (for example 10.0.1.1-10.0.1.3) or a CIDR", entry)
		}
		return addrRange{first: a, last: a}, nil
	}
}

// lastAddr is the highest address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for bit := 0; bit < 8; bit++ {
			if i*8+bit >= bits {
				b[i] |= 0x80 >> bit
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (s addressSet) contains(a netip.Addr) bool {
	for _, r := range s {
		if r.contains(a) {
			return true
		}
	}
	return false
}

func (s addressSet) overlaps(o addressSet) bool {
	for _, r := range s {
		for _, q := range o {
			if r.overlaps(q) {
				return true
			}
		}
	}
	return false
}

// parsePrefixAddr parses an address with its prefix length, such as 10.0.1.1/16.
func parsePrefixAddr(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("must be an address with its prefix length, such as 10.0.1.1/16")
	}
	return p, nil
}
