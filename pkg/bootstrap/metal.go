package bootstrap

import (
	"fmt"
	"net/netip"
	"strings"
)

// Talos' default route metric (network.DefaultRouteMetric); IPv6 defaults use twice this,
// exactly like Talos' own nocloud parser.
const defaultRouteMetric = 1024

// The pc* types mirror the fields of Talos' network.PlatformConfigSpec
// (pkg/machinery/resources/network, v1.14) that this provider sets, with Talos' YAML names and
// enum spellings. They are deliberately not the machinery types: importing
// machinery/resources/network pulls ~240 extra packages (gRPC, COSI runtime, netlink, CNI, CEL)
// into the manager and took 142 s to compile cold on the CI-sized box, for what is a YAML
// emitter. The tests decode every rendering strictly into the real PlatformConfigSpec and
// compare it with a spec built from machinery types, so drift is caught at test time instead.
type pcConfig struct {
	Addresses   []pcAddress    `yaml:"addresses,omitempty"`
	Links       []pcLink       `yaml:"links,omitempty"`
	Routes      []pcRoute      `yaml:"routes,omitempty"`
	Hostnames   []pcHostname   `yaml:"hostnames,omitempty"`
	Resolvers   []pcResolver   `yaml:"resolvers,omitempty"`
	TimeServers []pcTimeServer `yaml:"timeServers,omitempty"`
	Operators   []pcOperator   `yaml:"operators,omitempty"`
}

type pcAddress struct {
	Address  string `yaml:"address"`
	LinkName string `yaml:"linkName"`
	Family   string `yaml:"family"`
	Scope    string `yaml:"scope"`
	Flags    string `yaml:"flags"`
	Layer    string `yaml:"layer"`
}

type pcVLAN struct {
	VID      uint16 `yaml:"vlanID"`
	Protocol string `yaml:"vlanProtocol"`
}

type pcLink struct {
	Name       string  `yaml:"name"`
	Logical    bool    `yaml:"logical,omitempty"`
	Up         bool    `yaml:"up"`
	MTU        uint32  `yaml:"mtu,omitempty"`
	Kind       string  `yaml:"kind,omitempty"`
	Type       string  `yaml:"type,omitempty"`
	ParentName string  `yaml:"parentName,omitempty"`
	VLAN       *pcVLAN `yaml:"vlan,omitempty"`
	Layer      string  `yaml:"layer"`
}

type pcRoute struct {
	Family string `yaml:"family"`
	// Dst empty means default route, Talos' spelling after RouteSpecSpec.Normalize.
	Dst         string `yaml:"dst,omitempty"`
	Gateway     string `yaml:"gateway,omitempty"`
	OutLinkName string `yaml:"outLinkName"`
	Table       string `yaml:"table"`
	Priority    uint32 `yaml:"priority"`
	Scope       string `yaml:"scope"`
	Type        string `yaml:"type"`
	Protocol    string `yaml:"protocol"`
	Layer       string `yaml:"layer"`
}

type pcHostname struct {
	Hostname   string `yaml:"hostname"`
	Domainname string `yaml:"domainname,omitempty"`
	Layer      string `yaml:"layer"`
}

type pcNameServer struct {
	Addr     string `yaml:"addr"`
	Protocol string `yaml:"protocol"`
}

// pcResolver carries both the legacy dnsServers and the newer nameServers lists, as
// ResolverSpecSpec.Convert would produce: the metal platform unmarshals META 10 as-is without
// calling Convert, so either consumer finds its list.
type pcResolver struct {
	DNSServers    []string       `yaml:"dnsServers,omitempty"`
	NameServers   []pcNameServer `yaml:"nameServers,omitempty"`
	Layer         string         `yaml:"layer"`
	SearchDomains []string       `yaml:"searchDomains,omitempty"`
}

type pcTimeServer struct {
	TimeServers []string `yaml:"timeServers"`
	Layer       string   `yaml:"layer"`
}

type pcDHCP struct {
	RouteMetric uint32 `yaml:"routeMetric"`
}

type pcOperator struct {
	Operator  string  `yaml:"operator"`
	LinkName  string  `yaml:"linkName"`
	RequireUp bool    `yaml:"requireUp"`
	DHCP4     *pcDHCP `yaml:"dhcp4,omitempty"`
	DHCP6     *pcDHCP `yaml:"dhcp6,omitempty"`
	Layer     string  `yaml:"layer"`
}

const layerPlatform = "platform"

// PlatformNetworkConfig renders the value of META key 10 (MetalNetworkPlatformConfig): a Talos
// PlatformConfigSpec in YAML, read only by the metal platform. Links, addresses and routes are
// exactly what Talos' own nocloud parser derives from the equivalent network-config, so both
// delivery paths configure a node identically.
//
// Unlike nocloud, META 10 has no MAC matching: Interface.Name must be the kernel link name.
// hostname may be empty or fully qualified (the first label is the host name, the rest the
// domain name).
func PlatformNetworkConfig(n Network, hostname string) ([]byte, error) {
	if err := n.Validate(false); err != nil {
		return nil, fmt.Errorf("platform network config: %w", err)
	}

	var cfg pcConfig

	if hostname != "" {
		if err := ValidateHostname(hostname); err != nil {
			return nil, fmt.Errorf("platform network config: %w", err)
		}

		host, domain, _ := strings.Cut(hostname, ".")
		cfg.Hostnames = append(cfg.Hostnames, pcHostname{Hostname: host, Domainname: domain, Layer: layerPlatform})
	}

	for _, ifc := range n.Interfaces {
		cfg.Links = append(cfg.Links, pcLink{Name: ifc.Name, Up: true, MTU: ifc.MTU, Layer: layerPlatform})

		if ifc.DHCP4 {
			cfg.Operators = append(cfg.Operators, pcOperator{
				Operator: "dhcp4", LinkName: ifc.Name, RequireUp: true,
				DHCP4: &pcDHCP{RouteMetric: defaultRouteMetric}, Layer: layerPlatform,
			})
		}

		if ifc.DHCP6 {
			cfg.Operators = append(cfg.Operators, pcOperator{
				Operator: "dhcp6", LinkName: ifc.Name, RequireUp: true,
				DHCP6: &pcDHCP{RouteMetric: defaultRouteMetric}, Layer: layerPlatform,
			})
		}

		cfg.addL3(ifc.Name, ifc.IPConfig)
	}

	for _, v := range n.VLANs {
		name := v.linkName()

		cfg.Links = append(cfg.Links, pcLink{
			Name: name, Logical: true, Up: true, MTU: v.MTU, Kind: "vlan", Type: "ether",
			ParentName: v.Link, VLAN: &pcVLAN{VID: v.ID, Protocol: "802.1q"}, Layer: layerPlatform,
		})

		cfg.addL3(name, v.IPConfig)
	}

	if len(n.Nameservers) > 0 || len(n.SearchDomains) > 0 {
		r := pcResolver{DNSServers: addrStrings(n.Nameservers), SearchDomains: n.SearchDomains, Layer: layerPlatform}

		for _, a := range n.Nameservers {
			r.NameServers = append(r.NameServers, pcNameServer{Addr: a.String(), Protocol: "Do53"})
		}

		cfg.Resolvers = append(cfg.Resolvers, r)
	}

	if len(n.TimeServers) > 0 {
		cfg.TimeServers = append(cfg.TimeServers, pcTimeServer{TimeServers: n.TimeServers, Layer: layerPlatform})
	}

	return marshalYAML(&cfg)
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "inet4"
	}

	return "inet6"
}

func (cfg *pcConfig) addL3(link string, c IPConfig) {
	for _, a := range c.Addresses {
		cfg.Addresses = append(cfg.Addresses, pcAddress{
			Address: a.String(), LinkName: link, Family: family(a.Addr()),
			Scope: "global", Flags: "permanent", Layer: layerPlatform,
		})
	}

	if c.Gateway4.IsValid() {
		cfg.Routes = append(cfg.Routes, route(link, "", c.Gateway4, defaultRouteMetric, "global"))
	}

	if c.Gateway6.IsValid() {
		cfg.Routes = append(cfg.Routes, route(link, "", c.Gateway6, 2*defaultRouteMetric, "global"))
	}

	for _, r := range c.Routes {
		metric := uint32(defaultRouteMetric)
		if r.Via.Is6() {
			metric = 2 * defaultRouteMetric
		}

		if r.Metric != 0 {
			metric = r.Metric
		}

		dst := r.To.Masked()

		dstStr := dst.String()
		if dst.Bits() == 0 {
			dstStr = "" // 0.0.0.0/0 and ::/0: Talos normalises defaults to an empty destination
		}

		cfg.Routes = append(cfg.Routes, route(link, dstStr, r.Via, metric, "global"))

		if r.OnLink {
			// A host route to the gateway so it is reachable outside the address prefix.
			onlink := route(link, netip.PrefixFrom(r.Via, r.Via.BitLen()).String(), netip.Addr{}, metric, "link")
			onlink.Family = family(r.Via)
			cfg.Routes = append(cfg.Routes, onlink)
		}
	}
}

func route(link, dst string, gw netip.Addr, metric uint32, scope string) pcRoute {
	r := pcRoute{
		Dst: dst, OutLinkName: link, Table: "main", Priority: metric, Scope: scope,
		Type: "unicast", Protocol: "static", Layer: layerPlatform,
	}

	if gw.IsValid() {
		r.Gateway = gw.String()
		r.Family = family(gw)
	}

	return r
}
