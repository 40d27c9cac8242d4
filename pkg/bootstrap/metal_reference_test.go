package bootstrap

import (
	"net/netip"

	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
)

// referencePlatformConfig builds, with Talos machinery types, the PlatformConfigSpec that Talos'
// nocloud parser (v1.14.1 applyNetworkConfigV2 / applyNetworkConfigV2Ethernet) derives from the
// same network; PlatformNetworkConfig's output must decode to exactly this.
func referencePlatformConfig(n Network, hostname string) network.PlatformConfigSpec {
	var spec network.PlatformConfigSpec

	if hostname != "" {
		h := network.HostnameSpecSpec{ConfigLayer: network.ConfigPlatform}
		if err := h.ParseFQDN(hostname); err != nil {
			panic(err)
		}

		spec.Hostnames = append(spec.Hostnames, h)
	}

	for _, ifc := range n.Interfaces {
		spec.Links = append(spec.Links, network.LinkSpecSpec{Name: ifc.Name, Up: true, MTU: ifc.MTU, ConfigLayer: network.ConfigPlatform})

		if ifc.DHCP4 {
			spec.Operators = append(spec.Operators, network.OperatorSpecSpec{
				Operator: network.OperatorDHCP4, LinkName: ifc.Name, RequireUp: true,
				DHCP4: network.DHCP4OperatorSpec{RouteMetric: network.DefaultRouteMetric}, ConfigLayer: network.ConfigPlatform,
			})
		}

		if ifc.DHCP6 {
			spec.Operators = append(spec.Operators, network.OperatorSpecSpec{
				Operator: network.OperatorDHCP6, LinkName: ifc.Name, RequireUp: true,
				DHCP6: network.DHCP6OperatorSpec{RouteMetric: network.DefaultRouteMetric}, ConfigLayer: network.ConfigPlatform,
			})
		}

		refL3(&spec, ifc.Name, ifc.IPConfig)
	}

	for _, v := range n.VLANs {
		name := v.linkName()
		spec.Links = append(spec.Links, network.LinkSpecSpec{
			Name: name, Logical: true, Up: true, MTU: v.MTU, Kind: network.LinkKindVLAN, Type: nethelpers.LinkEther,
			ParentName: v.Link, VLAN: network.VLANSpec{VID: v.ID, Protocol: nethelpers.VLANProtocol8021Q},
			ConfigLayer: network.ConfigPlatform,
		})
		refL3(&spec, name, v.IPConfig)
	}

	if len(n.Nameservers) > 0 || len(n.SearchDomains) > 0 {
		r := network.ResolverSpecSpec{DNSServers: n.Nameservers, SearchDomains: n.SearchDomains, ConfigLayer: network.ConfigPlatform}
		r.Convert()
		spec.Resolvers = append(spec.Resolvers, r)
	}

	if len(n.TimeServers) > 0 {
		spec.TimeServers = append(spec.TimeServers, network.TimeServerSpecSpec{NTPServers: n.TimeServers, ConfigLayer: network.ConfigPlatform})
	}

	return spec
}

func refL3(spec *network.PlatformConfigSpec, link string, c IPConfig) {
	for _, a := range c.Addresses {
		fam := nethelpers.FamilyInet4
		if a.Addr().Is6() {
			fam = nethelpers.FamilyInet6
		}

		spec.Addresses = append(spec.Addresses, network.AddressSpecSpec{
			Address: a, LinkName: link, Family: fam, Scope: nethelpers.ScopeGlobal,
			Flags: nethelpers.AddressFlags(nethelpers.AddressPermanent), ConfigLayer: network.ConfigPlatform,
		})
	}

	gwRoute := func(gw netip.Addr, fam nethelpers.Family, prio uint32) {
		r := network.RouteSpecSpec{
			ConfigLayer: network.ConfigPlatform, Gateway: gw, OutLinkName: link, Table: nethelpers.TableMain,
			Protocol: nethelpers.ProtocolStatic, Type: nethelpers.TypeUnicast, Family: fam, Priority: prio,
		}
		r.Normalize()
		spec.Routes = append(spec.Routes, r)
	}

	if c.Gateway4.IsValid() {
		gwRoute(c.Gateway4, nethelpers.FamilyInet4, network.DefaultRouteMetric)
	}

	if c.Gateway6.IsValid() {
		gwRoute(c.Gateway6, nethelpers.FamilyInet6, 2*network.DefaultRouteMetric)
	}

	for _, rt := range c.Routes {
		r := network.RouteSpecSpec{
			ConfigLayer: network.ConfigPlatform, Destination: rt.To.Masked(), Gateway: rt.Via, OutLinkName: link,
			Table: nethelpers.TableMain, Protocol: nethelpers.ProtocolStatic, Type: nethelpers.TypeUnicast,
			Family: nethelpers.FamilyInet4, Priority: network.DefaultRouteMetric,
		}

		if rt.Metric != 0 {
			r.Priority = rt.Metric
		}

		if rt.Via.Is6() {
			r.Family = nethelpers.FamilyInet6
			if r.Priority == network.DefaultRouteMetric {
				r.Priority = 2 * network.DefaultRouteMetric
			}
		}

		r.Normalize()
		spec.Routes = append(spec.Routes, r)

		if rt.OnLink {
			spec.Routes = append(spec.Routes, network.RouteSpecSpec{
				ConfigLayer: network.ConfigPlatform, Destination: netip.PrefixFrom(rt.Via, rt.Via.BitLen()), OutLinkName: link,
				Scope: nethelpers.ScopeLink, Table: nethelpers.TableMain, Protocol: nethelpers.ProtocolStatic,
				Type: nethelpers.TypeUnicast, Family: r.Family, Priority: r.Priority,
			})
		}
	}
}
