package machine

import (
	"context"
	"net/netip"

	"k8s.io/utils/ptr"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// ProviderID is the machine's providerID: proxmox://<SMBIOS uuid>, the form the Proxmox
// cloud controller manager uses too, so nodes keep it whoever sets it.
func ProviderID(ptm *infrav1.ProxmoxTalosMachine) string {
	return infrav1.ProviderIDPrefix + ptm.Spec.SMBIOSUUID
}

// publish fulfils the contract: providerID, addresses and provisioned, together, so Cluster
// API copies a complete picture to the Machine.
func (r *Reconciler) publish(_ context.Context, s *Scope) (result, error) {
	if s.PTM.Spec.ProviderID == "" {
		s.PTM.Spec.ProviderID = ProviderID(s.PTM)
	}
	s.PTM.Status.Addresses = Addresses(s.Machine.Name, s.PTM.Spec.IPAddresses)
	if !ptr.Deref(s.PTM.Status.Initialization.Provisioned, false) {
		s.PTM.Status.Initialization.Provisioned = ptr.To(true)
		r.event(s, "Normal", "Provisioned", "VM %d is running with providerID %s", *s.PTM.Spec.VMID, s.PTM.Spec.ProviderID)
	}
	return next()
}

// Addresses are one InternalIP per static address and one Hostname address equal to the
// Machine name, which is the Talos hostname with CABPT's hostname.source MachineName. Any
// other hostname would make CACPPT evict the node's etcd member, so there is never one.
func Addresses(machineName string, allocated []infrav1.AllocatedAddress) []clusterv1.MachineAddress {
	var out []clusterv1.MachineAddress
	for _, a := range allocated {
		if p, err := netip.ParsePrefix(a.Address); err == nil {
			out = append(out, clusterv1.MachineAddress{Type: clusterv1.MachineInternalIP, Address: p.Addr().String()})
		}
	}
	return append(out, clusterv1.MachineAddress{Type: clusterv1.MachineHostName, Address: machineName})
}
