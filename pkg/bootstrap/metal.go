package bootstrap

import (
	"fmt"
	"net/netip"

	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
)

// PlatformNetworkConfig renders the value of META key 10 (MetalNetworkPlatformConfig): a Talos
// network.PlatformConfigSpec in YAML, read only by the metal platform. It is built from the
// Talos machinery types themselves, so enum spellings (family, scope, layer...) and field names
// are exactly what Talos decodes; the links/addresses/routes mirror what Talos' own nocloud
// parser produces for the same input, so both delivery paths configure a node identically.
//
// Unlike nocloud, META 10 has no MAC matching: Interface.Name must be the kernel link name.
// hostname may be empty or fully qualified (the domain part becomes the domainname).
func PlatformNetworkConfig(n Network, hostname string) ([]byte, error) {
	if err := n.Validate(false); err != nil {
		return nil, fmt.Errorf("platform network config: %w", err)
	}

	var spec network.PlatformConfigSpec

	if hostname != "" {
		if err := ValidateHostname(hostname); err != nil {
			return nil, fmt.Errorf("platform network config: %w", err)
		}

		h := network.HostnameSpecSpec{ConfigLayer: network.ConfigPlatform}
		if err := h.ParseFQDN(hostname); err != nil {
			return nil, fmt.Errorf("platform network config: hostname: %w", err)
		}

		spec.Hostnames = append(spec.Hostnames, h)
	}

	for _, ifc := range n.Interfaces {
		spec.Links = append(spec.Links, network.LinkSpecSpec{
			Name:        ifc.Name,
			Up:          true,
			MTU:         ifc.MTU,
			ConfigLayer: network.ConfigPlatform,
		})

		if ifc.DHCP4 {
			spec.Operators = append(spec.Operators, network.OperatorSpecSpec{
				Operator:    network.OperatorDHCP4,
				LinkName:    ifc.Name,
				RequireUp:   true,
				DHCP4:       network.DHCP4OperatorSpec{RouteMetric: network.DefaultRouteMetric},
				ConfigLayer: network.ConfigPlatform,
			})
		}

		if ifc.DHCP6 {
			spec.Operators = append(spec.Operators, network.OperatorSpecSpec{
				Operator:    network.OperatorDHCP6,
				LinkName:    ifc.Name,
				RequireUp:   true,
				DHCP6:       network.DHCP6OperatorSpec{RouteMetric: network.DefaultRouteMetric},
				ConfigLayer: network.ConfigPlatform,
			})
		}

		addL3(&spec, ifc.Name, ifc.IPConfig)
	}

	for _, v := range n.VLANs {
		name := v.linkName()

		spec.Links = append(spec.Links, network.LinkSpecSpec{
			Name:        name,
			Logical:     true,
			Up:          true,
			MTU:         v.MTU,
			Kind:        network.LinkKindVLAN,
			Type:        nethelpers.LinkEther,
			ParentName:  v.Link,
			VLAN:        network.VLANSpec{VID: v.ID, Protocol: nethelpers.VLANProtocol8021Q},
			ConfigLayer: network.ConfigPlatform,
		})

		addL3(&spec, name, v.IPConfig)
	}

	if len(n.Nameservers) > 0 || len(n.SearchDomains) > 0 {
		r := network.ResolverSpecSpec{
			DNSServers:    n.Nameservers,
			SearchDomains: n.SearchDomains,
			ConfigLayer:   network.ConfigPlatform,
		}
		r.Convert()

		spec.Resolvers = append(spec.Resolvers, r)
	}

	if len(n.TimeServers) > 0 {
		spec.TimeServers = append(spec.TimeServers, network.TimeServerSpecSpec{
			NTPServers:  n.TimeServers,
			ConfigLayer: network.ConfigPlatform,
		})
	}

	return marshalYAML(&spec)
}

func addL3(spec *network.PlatformConfigSpec, link string, c IPConfig) {
	for _, a := range c.Addresses {
		family := nethelpers.FamilyInet4
		if a.Addr().Is6() {
			family = nethelpers.FamilyInet6
		}

		spec.Addresses = append(spec.Addresses, network.AddressSpecSpec{
			Address:     a,
			LinkName:    link,
			Family:      family,
			Scope:       nethelpers.ScopeGlobal,
			Flags:       nethelpers.AddressFlags(nethelpers.AddressPermanent),
			ConfigLayer: network.ConfigPlatform,
		})
	}

	if c.Gateway4.IsValid() {
		spec.Routes = append(spec.Routes, staticRoute(link, netip.Prefix{}, c.Gateway4, nethelpers.FamilyInet4, network.DefaultRouteMetric))
	}

	if c.Gateway6.IsValid() {
		spec.Routes = append(spec.Routes, staticRoute(link, netip.Prefix{}, c.Gateway6, nethelpers.FamilyInet6, 2*network.DefaultRouteMetric))
	}

	for _, r := range c.Routes {
		family, metric := nethelpers.FamilyInet4, uint32(network.DefaultRouteMetric)
		if r.Via.Is6() {
			family, metric = nethelpers.FamilyInet6, 2*network.DefaultRouteMetric
		}

		if r.Metric != 0 {
			metric = r.Metric
		}

		spec.Routes = append(spec.Routes, staticRoute(link, r.To.Masked(), r.Via, family, metric))

		if r.OnLink {
			spec.Routes = append(spec.Routes, network.RouteSpecSpec{
				Family:      family,
				Destination: netip.PrefixFrom(r.Via, r.Via.BitLen()),
				OutLinkName: link,
				Table:       nethelpers.TableMain,
				Priority:    metric,
				Scope:       nethelpers.ScopeLink,
				Type:        nethelpers.TypeUnicast,
				Protocol:    nethelpers.ProtocolStatic,
				ConfigLayer: network.ConfigPlatform,
			})
		}
	}
}

func staticRoute(link string, dst netip.Prefix, gw netip.Addr, family nethelpers.Family, metric uint32) network.RouteSpecSpec {
	r := network.RouteSpecSpec{
		Family:      family,
		Destination: dst,
		Gateway:     gw,
		OutLinkName: link,
		Table:       nethelpers.TableMain,
		Priority:    metric,
		Scope:       nethelpers.ScopeGlobal,
		Type:        nethelpers.TypeUnicast,
		Protocol:    nethelpers.ProtocolStatic,
		ConfigLayer: network.ConfigPlatform,
	}
	// Normalize turns 0.0.0.0/0 and ::/0 into the empty destination Talos uses for defaults.
	r.Normalize()

	return r
}
