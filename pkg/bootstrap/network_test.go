package bootstrap

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	. "github.com/onsi/gomega"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"go.yaml.in/yaml/v4"
)

// talosNoCloudV2 is copied from Talos v1.14.1
// internal/app/machined/pkg/runtime/v1alpha1/platform/nocloud/metadata.go (NetworkConfig,
// Ethernet, VLAN; bonds omitted as unused). Decoding our output into it with KnownFields proves
// every key we emit is one Talos reads, with the type Talos expects.
type talosNoCloudV2 struct {
	Version   int                      `yaml:"version"`
	Ethernets map[string]talosEthernet `yaml:"ethernets,omitempty"`
	VLANs     map[string]talosVLAN     `yaml:"vlans,omitempty"`
}

type talosEthernet struct {
	Match struct {
		Name   string `yaml:"name,omitempty"`
		HWAddr string `yaml:"macaddress,omitempty"`
	} `yaml:"match,omitempty"`
	DHCPv4      bool     `yaml:"dhcp4,omitempty"`
	DHCPv6      bool     `yaml:"dhcp6,omitempty"`
	Address     []string `yaml:"addresses,omitempty"`
	Gateway4    string   `yaml:"gateway4,omitempty"`
	Gateway6    string   `yaml:"gateway6,omitempty"`
	MTU         uint32   `yaml:"mtu,omitempty"`
	NameServers struct {
		Search  []string `yaml:"search,omitempty"`
		Address []string `yaml:"addresses,omitempty"`
	} `yaml:"nameservers,omitempty"`
	Routes []struct {
		To     string `yaml:"to,omitempty"`
		Via    string `yaml:"via,omitempty"`
		Metric uint32 `yaml:"metric,omitempty"`
		Table  uint32 `yaml:"table,omitempty"`
		OnLink bool   `yaml:"on-link,omitempty"`
	} `yaml:"routes,omitempty"`
}

type talosVLAN struct {
	talosEthernet `yaml:",inline"`

	ID   uint16 `yaml:"id,omitempty"`
	Link string `yaml:"link,omitempty"`
}

func strictDecode(t *testing.T, data []byte, into any) {
	t.Helper()

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	NewWithT(t).Expect(dec.Decode(into)).To(Succeed())
}

var networkCases = []struct {
	name string
	net  Network
	host string
}{
	{name: "dual-stack-two-nics-vlan", net: dualStackNetwork(), host: "cp-1.lab.example"},
	{name: "single-nic", net: singleNICNetwork(), host: "worker-1"},
	{name: "ipv6-only", net: ipv6OnlyNetwork(), host: "v6-1"},
	{name: "dhcp", net: dhcpNetwork()},
}

func TestNoCloudNetworkConfigGolden(t *testing.T) {
	for _, tc := range networkCases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)

			got, err := NoCloudNetworkConfig(tc.net)
			g.Expect(err).NotTo(HaveOccurred())
			expectGolden(t, "network-config-"+tc.name+".yaml", got)

			var parsed talosNoCloudV2
			strictDecode(t, got, &parsed)
			g.Expect(parsed.Version).To(Equal(2))
			g.Expect(parsed.Ethernets).To(HaveLen(len(tc.net.Interfaces)))

			for _, ifc := range tc.net.Interfaces {
				g.Expect(parsed.Ethernets).To(HaveKey(ifc.Name))
				// Talos compares MACs case-insensitively, we normalise to lowercase anyway.
				g.Expect(parsed.Ethernets[ifc.Name].Match.HWAddr).To(Equal(mustMAC(ifc.MAC)))
			}

			// Talos rejects VLANs whose parent is not a rendered ethernet; keys must line up.
			for name, v := range parsed.VLANs {
				g.Expect(parsed.Ethernets).To(HaveKey(v.Link), "vlan %s", name)
			}
		})
	}
}

func TestNoCloudNetworkConfigQuotesMACs(t *testing.T) {
	g := NewWithT(t)

	got, err := NoCloudNetworkConfig(dualStackNetwork())
	g.Expect(err).NotTo(HaveOccurred())
	// Unquoted, 52:54:00:12:34:56 is a base-60 integer for YAML 1.1 parsers.
	g.Expect(string(got)).To(ContainSubstring(`macaddress: "52:54:00:12:34:56"`))
}

func TestPlatformNetworkConfigGolden(t *testing.T) {
	for _, tc := range networkCases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)

			got, err := PlatformNetworkConfig(tc.net, tc.host)
			g.Expect(err).NotTo(HaveOccurred())
			expectGolden(t, "meta10-"+tc.name+".yaml", got)

			// Talos' metal platform unmarshals META 10 into this very type; it must equal what
			// Talos itself derives from the same network (built with machinery types).
			var spec network.PlatformConfigSpec
			strictDecode(t, got, &spec)
			g.Expect(spec).To(Equal(referencePlatformConfig(tc.net, tc.host)))

			g.Expect(spec.Links).To(HaveLen(len(tc.net.Interfaces) + len(tc.net.VLANs)))
		})
	}
}

func TestPlatformNetworkConfigDefaultRoutes(t *testing.T) {
	g := NewWithT(t)

	got, err := PlatformNetworkConfig(dualStackNetwork(), "")
	g.Expect(err).NotTo(HaveOccurred())

	var spec network.PlatformConfigSpec
	strictDecode(t, got, &spec)

	var defaults []string

	for _, r := range spec.Routes {
		if !r.Destination.IsValid() {
			defaults = append(defaults, r.Gateway.String()+"@"+r.OutLinkName)
		}
	}

	// An empty dst is how Talos spells a default route.
	g.Expect(defaults).To(ConsistOf("10.0.1.1@ens18", "2001:db8:1::1@ens18"))
	g.Expect(spec.Resolvers).To(HaveLen(1))
	g.Expect(spec.Resolvers[0].SearchDomains).To(Equal([]string{"lab.example", "example.org"}))
	g.Expect(spec.Hostnames).To(BeEmpty())
}

func TestNetworkValidation(t *testing.T) {
	base := singleNICNetwork

	for _, tc := range []struct {
		name    string
		mutate  func(*Network)
		wantErr string
	}{
		{name: "missing MAC", mutate: func(n *Network) { n.Interfaces[0].MAC = "" }, wantErr: "mac is required"},
		{name: "bad MAC", mutate: func(n *Network) { n.Interfaces[0].MAC = "zz:24:11:00:00:01" }, wantErr: "not an Ethernet MAC"},
		{name: "duplicate MAC", mutate: func(n *Network) {
			n.Interfaces = append(n.Interfaces, Interface{Name: "eth1", MAC: "BC:24:11:00:00:02"})
		}, wantErr: "used twice"},
		{name: "long name", mutate: func(n *Network) { n.Interfaces[0].Name = "averyveryverylongname" }, wantErr: "Linux link name"},
		{name: "gateway4 is v6", mutate: func(n *Network) { n.Interfaces[0].Gateway4 = netip.MustParseAddr("2001:db8::1") }, wantErr: "not an IPv4"},
		{name: "gateway6 is v4", mutate: func(n *Network) { n.Interfaces[0].Gateway6 = netip.MustParseAddr("10.0.0.1") }, wantErr: "not an IPv6"},
		{name: "mixed route", mutate: func(n *Network) {
			n.Interfaces[0].Routes = []Route{{To: netip.MustParsePrefix("10.0.0.0/8"), Via: netip.MustParseAddr("2001:db8::1")}}
		}, wantErr: "mixes address families"},
		{name: "vlan orphan", mutate: func(n *Network) { n.VLANs = []VLAN{{ID: 5, Link: "eth9"}} }, wantErr: "not the name of an interface"},
		{name: "vlan id", mutate: func(n *Network) { n.VLANs = []VLAN{{ID: 4095, Link: "eth0"}} }, wantErr: "1-4094"},
		{name: "search domain", mutate: func(n *Network) { n.SearchDomains = []string{"Bad Domain"} }, wantErr: "searchDomains[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := base()
			tc.mutate(&n)
			_, err := NoCloudNetworkConfig(n)
			NewWithT(t).Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
		})
	}
}

func TestNoCloudMetaDataGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   MetaData
	}{
		{name: "hostname", in: MetaData{InstanceID: "cp-1", Hostname: "cp-1"}},
		{name: "fqdn-provider-id", in: MetaData{InstanceID: "4f1c1c8e-0b5e-4bb4-9d3a-2a8e0c3b8a11", Hostname: "worker-7.lab.example", ProviderID: "proxmox://pve-a/101"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NoCloudMetaData(tc.in)
			NewWithT(t).Expect(err).NotTo(HaveOccurred())
			expectGolden(t, "meta-data-"+tc.name+".yaml", got)
		})
	}
}

func TestNoCloudMetaDataErrors(t *testing.T) {
	g := NewWithT(t)

	_, err := NoCloudMetaData(MetaData{Hostname: "x"})
	g.Expect(err).To(MatchError(ContainSubstring("instance-id")))
	_, err = NoCloudMetaData(MetaData{InstanceID: "i", Hostname: "Not_A_Host"})
	g.Expect(err).To(MatchError(ContainSubstring("RFC 1123")))
}

func mustMAC(s string) string {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}

	return hw.String()
}
