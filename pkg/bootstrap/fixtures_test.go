package bootstrap

import "net/netip"

// Documentation-style addresses only: renderers never dial anything.
func dualStackNetwork() Network {
	return Network{
		Interfaces: []Interface{
			{
				Name: "ens18",
				MAC:  "BC:24:11:00:00:01",
				IPConfig: IPConfig{
					Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.1.11/24"), netip.MustParsePrefix("2001:db8:1::11/64")},
					Gateway4:  netip.MustParseAddr("10.0.1.1"),
					Gateway6:  netip.MustParseAddr("2001:db8:1::1"),
				},
			},
			{
				Name: "ens19",
				MAC:  "52:54:00:12:34:56",
				IPConfig: IPConfig{
					MTU:       9000,
					Addresses: []netip.Prefix{netip.MustParsePrefix("192.168.50.11/24")},
					Routes: []Route{
						{To: netip.MustParsePrefix("172.16.0.0/12"), Via: netip.MustParseAddr("192.168.50.1"), Metric: 100},
						{To: netip.MustParsePrefix("2001:db8:ff::/48"), Via: netip.MustParseAddr("fe80::1"), OnLink: true},
					},
				},
			},
		},
		VLANs: []VLAN{
			{
				ID:   100,
				Link: "ens18",
				IPConfig: IPConfig{
					MTU:       1400,
					Addresses: []netip.Prefix{netip.MustParsePrefix("10.100.0.11/24")},
					Routes:    []Route{{To: netip.MustParsePrefix("10.200.0.0/16"), Via: netip.MustParseAddr("10.100.0.1")}},
				},
			},
		},
		Nameservers:   []netip.Addr{netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("2001:db8:1::53")},
		SearchDomains: []string{"lab.example", "example.org"},
		TimeServers:   []string{"pool.ntp.org"},
	}
}

func singleNICNetwork() Network {
	return Network{
		Interfaces: []Interface{{
			Name: "eth0",
			MAC:  "bc:24:11:00:00:02",
			IPConfig: IPConfig{
				Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.1.12/24")},
				Gateway4:  netip.MustParseAddr("10.0.1.1"),
			},
		}},
		Nameservers: []netip.Addr{netip.MustParseAddr("10.0.1.1")},
	}
}

func ipv6OnlyNetwork() Network {
	return Network{
		Interfaces: []Interface{{
			Name: "ens18",
			MAC:  "bc:24:11:00:00:03",
			IPConfig: IPConfig{
				Addresses: []netip.Prefix{netip.MustParsePrefix("2001:db8:2::13/64")},
				Gateway6:  netip.MustParseAddr("2001:db8:2::1"),
				Routes:    []Route{{To: netip.MustParsePrefix("::/0"), Via: netip.MustParseAddr("2001:db8:2::2"), Metric: 4096}},
			},
		}},
		Nameservers: []netip.Addr{netip.MustParseAddr("2001:db8:2::53")},
	}
}

func dhcpNetwork() Network {
	return Network{Interfaces: []Interface{{Name: "ens18", MAC: "bc:24:11:00:00:04", DHCP4: true, DHCP6: true}}}
}
