package bootstrap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
)

// Network is the static network configuration of one VM, rendered either as nocloud
// network-config (NoCloudNetworkConfig) or as a META key 10 PlatformNetworkConfig.
type Network struct {
	// Interfaces are the VM NICs in Proxmox order (net0, net1, ...).
	Interfaces []Interface
	// VLANs are 802.1Q sub-interfaces on top of Interfaces.
	VLANs []VLAN
	// Nameservers apply to the whole node (Talos keeps one resolver list).
	Nameservers []netip.Addr
	// SearchDomains are DNS search domains. Only the metal (META 10) rendering makes Talos use
	// them: Talos' nocloud parser (v1.14) reads but ignores nameservers.search, so with nocloud
	// put them into the machine config (machine.network.searchDomains) as well.
	SearchDomains []string
	// TimeServers are NTP servers; only the metal rendering carries them (nocloud has no field).
	TimeServers []string
}

// IPConfig is the layer-3 configuration shared by interfaces and VLANs.
type IPConfig struct {
	// MTU of the link; 0 keeps the default.
	MTU uint32
	// Addresses are static addresses with prefix length, IPv4 and/or IPv6.
	Addresses []netip.Prefix
	// Gateway4 adds an IPv4 default route (metric 1024) via this link when valid.
	Gateway4 netip.Addr
	// Gateway6 adds an IPv6 default route (metric 2048) via this link when valid.
	Gateway6 netip.Addr
	// Routes are extra static routes via this link.
	Routes []Route
}

// Interface is one NIC.
type Interface struct {
	// Name is the link name. nocloud uses it as the ethernets key (the MAC decides which NIC it
	// applies to, but Talos uses this key as the VLAN parent name), and META 10 uses it as the
	// link name, so it should be the kernel name: "ens18" for Proxmox net0 on virtio with
	// predictable names, "eth0" with net.ifnames=0.
	Name string
	// MAC is the NIC MAC address; required for nocloud, where NICs are matched by MAC.
	MAC string
	// DHCP4 / DHCP6 enable DHCP on the link in addition to static addresses.
	DHCP4, DHCP6 bool
	IPConfig
}

// VLAN is an 802.1Q sub-interface.
type VLAN struct {
	// Name of the VLAN link; empty means "<Link>.<ID>".
	Name string
	// ID is the VLAN ID, 1-4094.
	ID uint16
	// Link is the Name of the parent Interface.
	Link string
	IPConfig
}

// Route is a static route.
type Route struct {
	// To is the destination; 0.0.0.0/0 or ::/0 make a default route.
	To netip.Prefix
	// Via is the gateway, same family as To.
	Via netip.Addr
	// Metric is the route priority; 0 means Talos' default (1024, 2048 for IPv6).
	Metric uint32
	// OnLink also adds a link-scope route to Via, for gateways outside the address prefix.
	OnLink bool
}

var (
	linkNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)
	hostnameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

func (v VLAN) linkName() string {
	if v.Name != "" {
		return v.Name
	}

	return fmt.Sprintf("%s.%d", v.Link, v.ID)
}

// Validate checks the configuration. requireMAC is true for nocloud, which matches NICs by MAC.
func (n Network) Validate(requireMAC bool) error {
	var errs []error

	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	names := map[string]bool{}
	macs := map[string]bool{}

	for i, ifc := range n.Interfaces {
		field := fmt.Sprintf("interfaces[%d]", i)

		if !linkNameRe.MatchString(ifc.Name) {
			add("%s.name %q must be a Linux link name (1-15 characters)", field, ifc.Name)
		} else if names[ifc.Name] {
			add("%s.name %q is used twice", field, ifc.Name)
		}

		names[ifc.Name] = true

		if ifc.MAC == "" {
			if requireMAC {
				add("%s.mac is required: nocloud matches interfaces by MAC address", field)
			}
		} else if hw, err := net.ParseMAC(ifc.MAC); err != nil || len(hw) != 6 {
			add("%s.mac %q is not an Ethernet MAC address", field, ifc.MAC)
		} else if macs[hw.String()] {
			add("%s.mac %q is used twice", field, ifc.MAC)
		} else {
			macs[hw.String()] = true
		}

		errs = append(errs, ifc.IPConfig.validate(field)...)
	}

	for i, v := range n.VLANs {
		field := fmt.Sprintf("vlans[%d]", i)

		if v.ID < 1 || v.ID > 4094 {
			add("%s.id %d must be 1-4094", field, v.ID)
		}

		parent := false

		for _, ifc := range n.Interfaces {
			parent = parent || ifc.Name == v.Link
		}

		if !parent {
			add("%s.link %q is not the name of an interface", field, v.Link)
		}

		if name := v.linkName(); !linkNameRe.MatchString(name) {
			add("%s.name %q must be a Linux link name (1-15 characters)", field, name)
		} else if names[name] {
			add("%s.name %q is used twice", field, name)
		} else {
			names[name] = true
		}

		errs = append(errs, v.IPConfig.validate(field)...)
	}

	for i, a := range n.Nameservers {
		if !a.IsValid() {
			add("nameservers[%d] is not a valid IP address", i)
		}
	}

	for i, d := range n.SearchDomains {
		if !hostnameRe.MatchString(d) {
			add("searchDomains[%d] %q is not a lowercase DNS name", i, d)
		}
	}

	for i, s := range n.TimeServers {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			add("timeServers[%d] %q must be a host name or IP address", i, s)
		}
	}

	return errors.Join(errs...)
}

func (c IPConfig) validate(field string) []error {
	var errs []error

	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	for i, a := range c.Addresses {
		if !a.IsValid() {
			add("%s.addresses[%d] is not a valid address/prefix", field, i)
		}
	}

	if c.Gateway4.IsValid() && !c.Gateway4.Is4() {
		add("%s.gateway4 %s is not an IPv4 address", field, c.Gateway4)
	}

	if c.Gateway6.IsValid() && (!c.Gateway6.Is6() || c.Gateway6.Is4In6()) {
		add("%s.gateway6 %s is not an IPv6 address", field, c.Gateway6)
	}

	for i, r := range c.Routes {
		switch {
		case !r.To.IsValid() || !r.Via.IsValid():
			add("%s.routes[%d] needs a destination prefix and a gateway", field, i)
		case r.To.Addr().Is4() != r.Via.Is4():
			add("%s.routes[%d] mixes address families (%s via %s)", field, i, r.To, r.Via)
		}
	}

	return errs
}

// ValidateHostname checks a node host name (optionally fully qualified).
func ValidateHostname(h string) error {
	if len(h) > 253 || !hostnameRe.MatchString(h) {
		return fmt.Errorf("hostname %q is not a lowercase RFC 1123 name", h)
	}

	return nil
}
