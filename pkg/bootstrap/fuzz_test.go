package bootstrap

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"go.yaml.in/yaml/v4"
)

// fuzzNetwork builds a Network from fuzzed scalars; unparsable addresses stay unset, so the
// renderers see every shape Validate must judge.
func fuzzNetwork(name, mac, addr, gw, route string, vlanID uint16, vlanName string, mtu uint32, ns, search string, dhcp bool) Network {
	ifc := Interface{Name: name, MAC: mac, DHCP4: dhcp, DHCP6: !dhcp && addr == ""}
	ifc.MTU = mtu
	for _, a := range strings.Split(addr, " ") {
		if p, err := netip.ParsePrefix(a); err == nil {
			ifc.Addresses = append(ifc.Addresses, p)
		}
	}
	if g, err := netip.ParseAddr(gw); err == nil {
		if g.Is4() {
			ifc.Gateway4 = g
		} else {
			ifc.Gateway6 = g
		}
	}
	if to, via, ok := strings.Cut(route, " via "); ok {
		p, err1 := netip.ParsePrefix(to)
		v, err2 := netip.ParseAddr(via)
		if err1 == nil && err2 == nil {
			ifc.Routes = append(ifc.Routes, Route{To: p, Via: v, Metric: mtu % 4096, OnLink: dhcp})
		}
	}
	n := Network{Interfaces: []Interface{ifc}}
	if vlanID != 0 {
		n.VLANs = append(n.VLANs, VLAN{Name: vlanName, ID: vlanID, Link: name, IPConfig: IPConfig{Addresses: ifc.Addresses}})
	}
	if a, err := netip.ParseAddr(ns); err == nil {
		n.Nameservers = append(n.Nameservers, a)
	}
	if search != "" {
		n.SearchDomains = append(n.SearchDomains, search)
	}
	return n
}

// FuzzNetworkRenderers: for any network, NoCloudNetworkConfig and PlatformNetworkConfig
// either refuse it with an error or render YAML that Talos' own types decode strictly (every
// key known, every type right) to what Talos itself would derive: the MAC and addresses of
// nocloud, and for META 10 exactly the PlatformConfigSpec built with Talos' machinery.
func FuzzNetworkRenderers(f *testing.F) {
	f.Add("ens18", "52:54:00:12:34:56", "10.0.1.5/16 2001:db8::5/64", "10.0.0.1", "192.0.2.0/24 via 10.0.0.254", uint16(0), "", uint32(1500), "1.1.1.1", "lab.example", false, "cp-1.lab.example")
	f.Add("eth0", "BC:24:11:AA:BB:CC", "", "", "", uint16(100), "", uint32(0), "", "", true, "worker-1")
	f.Add("ens19", "52:54:00:00:00:01", "2001:db8::1/64", "fe80::1", "::/0 via fe80::1", uint16(4094), "storage", uint32(9000), "2001:4860:4860::8888", "", false, "")
	f.Add("a: b", "52:54:00:00:00:01", "10.0.0.1/8", "", "", uint16(1), "x\ny", uint32(1), "::", "- x", false, "Bad_Host")
	f.Fuzz(func(t *testing.T, name, mac, addr, gw, route string, vlanID uint16, vlanName string, mtu uint32, ns, search string, dhcp bool, hostname string) {
		g := NewWithT(t)
		n := fuzzNetwork(name, mac, addr, gw, route, vlanID, vlanName, mtu, ns, search, dhcp)

		if out, err := NoCloudNetworkConfig(n); err == nil {
			var parsed talosNoCloudV2
			strictDecode(t, out, &parsed)
			g.Expect(parsed.Version).To(Equal(2))
			g.Expect(parsed.Ethernets).To(HaveLen(1))
			g.Expect(parsed.Ethernets).To(HaveKey(name))
			eth := parsed.Ethernets[name]
			g.Expect(eth.Match.HWAddr).To(Equal(mustMAC(mac)))
			g.Expect(eth.Address).To(HaveLen(len(n.Interfaces[0].Addresses)))
			for i, a := range n.Interfaces[0].Addresses {
				g.Expect(eth.Address[i]).To(Equal(a.String()))
			}
			for vname, v := range parsed.VLANs {
				g.Expect(parsed.Ethernets).To(HaveKey(v.Link), "vlan %s", vname)
			}
		}

		if out, err := PlatformNetworkConfig(n, hostname); err == nil {
			var spec network.PlatformConfigSpec
			strictDecode(t, out, &spec)
			g.Expect(spec).To(Equal(referencePlatformConfig(n, hostname)))
		}
	})
}

// FuzzMetaData: meta-data round-trips whatever instance id, hostname and provider id it is
// given (YAML quoting keeps a newline or `key: value` in a value from adding a key), or
// refuses a bad hostname.
func FuzzMetaData(f *testing.F) {
	f.Add("vm-100", "cp-1.lab.example", "proxmox://0b3f")
	f.Add("x\nlocal-hostname: evil", "worker-1", "a: b")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, id, host, providerID string) {
		out, err := NoCloudMetaData(MetaData{InstanceID: id, Hostname: host, ProviderID: providerID})
		if err != nil {
			return
		}
		var doc struct {
			InstanceID    string `yaml:"instance-id"`
			LocalHostname string `yaml:"local-hostname"`
			ProviderID    string `yaml:"provider-id"`
		}
		dec := yaml.NewDecoder(bytes.NewReader(out))
		dec.KnownFields(true)
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("meta-data does not decode: %v\n%s", err, out)
		}
		if doc.InstanceID != id || doc.LocalHostname != host || doc.ProviderID != providerID {
			t.Fatalf("round trip: got %+v from %q %q %q:\n%s", doc, id, host, providerID, out)
		}
	})
}

// FuzzISO: the boot ISO carries any file content byte for byte, and reading arbitrary bytes
// as an ISO (what the simulators do with uploads) returns an error, never a panic.
func FuzzISO(f *testing.F) {
	f.Add([]byte("#!talos\nversion: v1alpha1\n"), []byte("instance-id: a\n"), []byte("version: 2\n"))
	f.Add([]byte{0}, []byte{0xff, 0xfe}, []byte(nil))
	f.Fuzz(func(t *testing.T, user, meta, netcfg []byte) {
		_, _, _ = ReadISO(user)
		img, err := CIDataISO(CIData{UserData: user, MetaData: meta, NetworkConfig: netcfg})
		if err != nil {
			if len(user) > 0 && len(meta) > 0 {
				t.Fatalf("CIDataISO refused valid input: %v", err)
			}
			return
		}
		label, files, err := ReadISO(img)
		if err != nil {
			t.Fatalf("reading our own ISO: %v", err)
		}
		if label != CIDataLabel || !bytes.Equal(files[FileUserData], user) || !bytes.Equal(files[FileMetaData], meta) {
			t.Fatalf("ISO round trip lost data: label %q, %d files", label, len(files))
		}
		if netcfg != nil && !bytes.Equal(files[FileNetworkConfig], netcfg) {
			t.Fatal("ISO round trip lost network-config")
		}
	})
}
