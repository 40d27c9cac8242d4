package machine

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/bootstrap"
)

// MACAddress is the MAC of a machine's NIC: a locally administered unicast address hashed
// from the machine's identity recorded in spec.smbiosUUID and the device name. The boot
// ISO's network config matches NICs by MAC, so it must be known before the VM exists,
// stay the same if the VM is re-created after a crash, and survive `clusterctl move`
// (which gives the object a new UID). Only a machine without a recorded uuid (created by
// an older version before placement) falls back to its UID.
func MACAddress(ptm *infrav1.ProxmoxTalosMachine, device string) string {
	id := ptm.Spec.SMBIOSUUID
	if id == "" {
		id = string(ptm.UID)
	}
	sum := sha256.Sum256([]byte(id + "/" + device))
	b := sum[:6]
	b[0] = (b[0] | 0x02) &^ 0x01 // locally administered, unicast
	return fmt.Sprintf("%02X:%02X:%02X:%02X:%02X:%02X", b[0], b[1], b[2], b[3], b[4], b[5])
}

// linkName is the kernel name of netN on a virtio NIC of a q35 VM with predictable names
// (net0 → ens18). Talos uses it as the link name for VLAN parents and META 10.
func linkName(device string) string {
	n, err := strconv.Atoi(strings.TrimPrefix(device, "net"))
	if err != nil {
		return device
	}
	return "ens" + strconv.Itoa(18+n)
}

// networkFor renders the machine's static network from spec.ipAddresses. requireMAC is
// false for META 10, which matches links by name.
func networkFor(s *Scope, metal bool) (bootstrap.Network, error) {
	var n bootstrap.Network
	seenDNS := map[netip.Addr]bool{}
	for _, d := range s.Spec.NetworkDevices {
		iface := bootstrap.Interface{
			Name:  linkName(d.Name),
			MAC:   MACAddress(s.PTM, d.Name),
			DHCP4: d.IPv4 != nil && d.IPv4.DHCP != nil && *d.IPv4.DHCP,
			DHCP6: d.IPv6 != nil && d.IPv6.DHCP != nil && *d.IPv6.DHCP,
		}
		if d.MTU != nil {
			iface.MTU = uint32(*d.MTU)
		}
		for _, a := range s.PTM.Spec.IPAddresses {
			if a.Device != d.Name {
				continue
			}
			p, err := netip.ParsePrefix(a.Address)
			if err != nil {
				return n, fmt.Errorf("spec.ipAddresses: %q: %w", a.Address, err)
			}
			iface.Addresses = append(iface.Addresses, p)
			if gw, err := netip.ParseAddr(a.Gateway); err == nil {
				if gw.Is4() {
					iface.Gateway4 = gw
				} else {
					iface.Gateway6 = gw
				}
			}
			for _, dns := range a.DNSServers {
				if ip, err := netip.ParseAddr(dns); err == nil && !seenDNS[ip] {
					seenDNS[ip] = true
					n.Nameservers = append(n.Nameservers, ip)
				}
			}
		}
		n.Interfaces = append(n.Interfaces, iface)
	}
	if err := n.Validate(!metal); err != nil {
		return n, err
	}
	return n, nil
}

// hasStaticNetwork reports whether any device has a static address or DHCP explicitly.
func hasStaticNetwork(s *Scope) bool {
	if len(s.PTM.Spec.IPAddresses) > 0 {
		return true
	}
	for _, d := range s.Spec.NetworkDevices {
		if (d.IPv4 != nil && d.IPv4.DHCP != nil) || (d.IPv6 != nil && d.IPv6.DHCP != nil) {
			return true
		}
	}
	return false
}
