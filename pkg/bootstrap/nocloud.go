package bootstrap

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"go.yaml.in/yaml/v4"
)

// quoted marshals as a double-quoted YAML string. MAC addresses need it: an all-digit MAC such
// as 52:54:00:12:34:56 is a base-60 integer to YAML 1.1 parsers (PyYAML in cloud-init).
type quoted string

// MarshalYAML implements yaml.Marshaler.
func (q quoted) MarshalYAML() (any, error) {
	return &yaml.Node{Kind: yaml.ScalarNode, Style: yaml.DoubleQuotedStyle, Tag: "!!str", Value: string(q)}, nil
}

// The v2 structs mirror the subset of Talos' nocloud parser (platform/nocloud/metadata.go,
// Talos v1.14) that this provider uses; field order is the rendering order.
type v2Config struct {
	Version   int                   `yaml:"version"`
	Ethernets map[string]v2Ethernet `yaml:"ethernets,omitempty"`
	VLANs     map[string]v2VLAN     `yaml:"vlans,omitempty"`
}

type v2Match struct {
	MACAddress quoted `yaml:"macaddress"`
}

type v2Nameservers struct {
	Search    []string `yaml:"search,omitempty"`
	Addresses []string `yaml:"addresses,omitempty"`
}

type v2Route struct {
	To     string `yaml:"to"`
	Via    string `yaml:"via"`
	Metric uint32 `yaml:"metric,omitempty"`
	OnLink bool   `yaml:"on-link,omitempty"`
}

type v2L3 struct {
	DHCP4       bool           `yaml:"dhcp4,omitempty"`
	DHCP6       bool           `yaml:"dhcp6,omitempty"`
	MTU         uint32         `yaml:"mtu,omitempty"`
	Addresses   []string       `yaml:"addresses,omitempty"`
	Gateway4    string         `yaml:"gateway4,omitempty"`
	Gateway6    string         `yaml:"gateway6,omitempty"`
	Nameservers *v2Nameservers `yaml:"nameservers,omitempty"`
	Routes      []v2Route      `yaml:"routes,omitempty"`
}

type v2Ethernet struct {
	Match v2Match `yaml:"match"`
	v2L3  `yaml:",inline"`
}

type v2VLAN struct {
	ID   uint16 `yaml:"id"`
	Link string `yaml:"link"`
	v2L3 `yaml:",inline"`
}

func toV2L3(c IPConfig) v2L3 {
	out := v2L3{MTU: c.MTU}

	for _, a := range c.Addresses {
		out.Addresses = append(out.Addresses, a.String())
	}

	if c.Gateway4.IsValid() {
		out.Gateway4 = c.Gateway4.String()
	}

	if c.Gateway6.IsValid() {
		out.Gateway6 = c.Gateway6.String()
	}

	for _, r := range c.Routes {
		out.Routes = append(out.Routes, v2Route{To: r.To.Masked().String(), Via: r.Via.String(), Metric: r.Metric, OnLink: r.OnLink})
	}

	return out
}

// NoCloudNetworkConfig renders a cloud-init network-config version 2 document in the shape
// Talos' nocloud platform parses: ethernets matched by MAC (the key is only a name), static
// addresses, gateway4/gateway6 default routes, extra routes, MTU and VLANs. Nameservers and
// search domains go on the first interface; Talos merges nameservers of all links into one
// resolver list (and ignores search domains, see Network.SearchDomains).
func NoCloudNetworkConfig(n Network) ([]byte, error) {
	if err := n.Validate(true); err != nil {
		return nil, fmt.Errorf("network-config: %w", err)
	}

	cfg := v2Config{Version: 2, Ethernets: map[string]v2Ethernet{}}

	for i, ifc := range n.Interfaces {
		hw, _ := net.ParseMAC(ifc.MAC) //nolint:errcheck // validated above
		eth := v2Ethernet{Match: v2Match{MACAddress: quoted(hw.String())}, v2L3: toV2L3(ifc.IPConfig)}
		eth.DHCP4, eth.DHCP6 = ifc.DHCP4, ifc.DHCP6

		if i == 0 && (len(n.Nameservers) > 0 || len(n.SearchDomains) > 0) {
			eth.Nameservers = &v2Nameservers{Search: n.SearchDomains, Addresses: addrStrings(n.Nameservers)}
		}

		cfg.Ethernets[ifc.Name] = eth
	}

	if len(n.VLANs) > 0 {
		cfg.VLANs = map[string]v2VLAN{}

		for _, v := range n.VLANs {
			cfg.VLANs[v.linkName()] = v2VLAN{ID: v.ID, Link: v.Link, v2L3: toV2L3(v.IPConfig)}
		}
	}

	return marshalYAML(cfg)
}

// MetaData is the content of the nocloud meta-data file.
type MetaData struct {
	// InstanceID identifies the instance; Talos exposes it in PlatformMetadata.
	InstanceID string
	// Hostname becomes local-hostname, the node host name (may be fully qualified).
	Hostname string
	// ProviderID is optional; Talos v1.14 parses but does not hand it to the kubelet, so the
	// provider still sets Node.spec.providerID itself.
	ProviderID string
}

type metaDataDoc struct {
	InstanceID    string `yaml:"instance-id"`
	LocalHostname string `yaml:"local-hostname,omitempty"`
	ProviderID    string `yaml:"provider-id,omitempty"`
}

// NoCloudMetaData renders the nocloud meta-data YAML.
func NoCloudMetaData(m MetaData) ([]byte, error) {
	if m.InstanceID == "" {
		return nil, fmt.Errorf("meta-data: instance-id is required")
	}

	if m.Hostname != "" {
		if err := ValidateHostname(m.Hostname); err != nil {
			return nil, fmt.Errorf("meta-data: %w", err)
		}
	}

	return marshalYAML(metaDataDoc{InstanceID: m.InstanceID, LocalHostname: m.Hostname, ProviderID: m.ProviderID})
}

func addrStrings(as []netip.Addr) []string {
	var out []string

	for _, a := range as {
		out = append(out, a.String())
	}

	return out
}

// marshalYAML uses yaml/v4 (the library Talos parses with) and a 2-space indent for readability.
func marshalYAML(v any) ([]byte, error) {
	var buf bytes.Buffer

	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)

	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}

	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}

	return buf.Bytes(), nil
}
