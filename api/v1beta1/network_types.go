package v1beta1

import (
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"
)

// IPPool is a static address pool owned by a ProxmoxTalosCluster. Machines take addresses
// from it (see AddressSource.FromPool) and give them back when they are deleted; the
// control-plane endpoint may be taken from it too. A pool holds one address family.
type IPPool struct {
	// name identifies the pool within the cluster (for example control-plane or workers).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// addresses the pool hands out: single addresses (10.0.1.1), inclusive ranges
	// (10.0.1.1-10.0.1.3) or CIDRs (10.0.1.0/29, every address of the block). All entries
	// must be of the same family.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=100
	Addresses []string `json:"addresses"`

	// prefix is the prefix length of the network the addresses live in (for example 16 for
	// 10.0.0.0/16): it becomes the netmask on the node.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=128
	Prefix int32 `json:"prefix"`

	// gateway is the default gateway of the network; it must lie inside the prefix and not
	// among the pool's addresses. Empty means no default route through this pool's NIC.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Gateway string `json:"gateway,omitempty"`

	// dnsServers are the resolvers given to nodes that take an address from this pool.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=64
	DNSServers []string `json:"dnsServers,omitempty"`
}

// AddressSource says where one address family of a network device gets its address.
// Exactly one of its fields is set.
// +kubebuilder:validation:MinProperties=1
// +kubebuilder:validation:MaxProperties=1
type AddressSource struct {
	// fromPool names one of the cluster's spec.ipPools.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	FromPool string `json:"fromPool,omitempty"`

	// ipamPoolRef references a Cluster API IPAM pool (for example an InClusterIPPool); the
	// provider creates an IPAddressClaim per machine and device and uses the IPAddress the
	// IPAM provider allocates.
	// +optional
	IPAMPoolRef *ipamv1.IPPoolReference `json:"ipamPoolRef,omitempty"`

	// dhcp leaves the address to DHCP. The hand-run pipeline used no DHCP; use it only on
	// networks that have it.
	// +optional
	DHCP *bool `json:"dhcp,omitempty"`
}

// NetworkDevice is one virtual NIC of a VM.
type NetworkDevice struct {
	// name is the Proxmox device name, net0 to net31. Devices are matched by name when
	// templates are merged and in the boot ISO's network config (by the generated MAC).
	// +required
	// +kubebuilder:validation:Pattern=`^net([0-9]|[12][0-9]|3[01])$`
	Name string `json:"name"`

	// bridge is the Linux or OVS bridge on the Proxmox node. Defaults to vmbr0.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_.\-]+$`
	Bridge string `json:"bridge,omitempty"`

	// model of the emulated NIC. Defaults to virtio.
	// +optional
	// +kubebuilder:validation:Enum=virtio;e1000;e1000e;vmxnet3;rtl8139
	Model string `json:"model,omitempty"`

	// vlan is the 802.1Q tag set on the bridge port (1 to 4094). Unset means untagged.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4094
	VLAN *int32 `json:"vlan,omitempty"`

	// mtu of the NIC in bytes (576 to 65520). Unset inherits the bridge's MTU.
	// +optional
	// +kubebuilder:validation:Minimum=576
	// +kubebuilder:validation:Maximum=65520
	MTU *int32 `json:"mtu,omitempty"`

	// ipv4 says where the device's IPv4 address comes from. Unset means no IPv4 address.
	// +optional
	IPv4 *AddressSource `json:"ipv4,omitempty"`

	// ipv6 says where the device's IPv6 address comes from. Unset means no IPv6 address.
	// +optional
	IPv6 *AddressSource `json:"ipv6,omitempty"`
}

// AllocatedAddress is an address the controller allocated to one device of a machine.
// Recorded in spec so that it survives `clusterctl move`, which does not restore status.
type AllocatedAddress struct {
	// device is the network device name (net0...).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=8
	Device string `json:"device"`

	// address with its prefix length, for example 10.0.1.1/16.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	Address string `json:"address"`

	// gateway for this address, if any.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Gateway string `json:"gateway,omitempty"`

	// dnsServers that came with the address.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=64
	DNSServers []string `json:"dnsServers,omitempty"`

	// pool the address came from: the name of a cluster pool or `<Kind>/<name>` of an IPAM
	// pool.
	// +optional
	// +kubebuilder:validation:MaxLength=320
	Pool string `json:"pool,omitempty"`
}
