package machine

import (
	"context"
	"errors"
	"fmt"

	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
)

// addressNeed is one static address a device needs.
type addressNeed struct {
	device string
	family string // "ipv4" or "ipv6"
	src    infrav1.AddressSource
}

func addressNeeds(spec infrav1.ProxmoxTalosMachineSpec) []addressNeed {
	var needs []addressNeed
	for _, d := range spec.NetworkDevices {
		for _, f := range []struct {
			family string
			src    *infrav1.AddressSource
		}{{"ipv4", d.IPv4}, {"ipv6", d.IPv6}} {
			if f.src != nil && (f.src.FromPool != "" || f.src.IPAMPoolRef != nil) {
				needs = append(needs, addressNeed{device: d.Name, family: f.family, src: *f.src})
			}
		}
	}
	return needs
}

// ClaimName is the IPAddressClaim of one device and family of a machine. It is
// deterministic, so a restarted controller finds the address it claimed before.
func ClaimName(ptm *infrav1.ProxmoxTalosMachine, device, family string) string {
	return ptm.Name + "-" + device + "-" + family
}

// claimAddresses allocates every static address the machine's devices need and records
// them in spec.ipAddresses (which survives `clusterctl move`). Claims are keyed by
// machine, device and family, so repeating this step returns the same addresses.
func (r *Reconciler) claimAddresses(ctx context.Context, s *Scope) (result, error) {
	needs := addressNeeds(s.Spec)
	if len(s.PTM.Spec.IPAddresses) >= len(needs) {
		r.setCondition(s, infrav1.AddressesClaimedCondition, true, infrav1.ReadyReason, "")
		return next()
	}
	s.PTM.Status.Step = infrav1.StepClaimingAddresses
	owner := ipamOwner(s)

	var out []infrav1.AllocatedAddress
	for _, n := range needs {
		claim := ClaimName(s.PTM, n.device, n.family)
		var (
			alloc ipam.Allocation
			err   error
			pool  string
		)
		if n.src.FromPool != "" {
			p, ok := ipam.FindPool(s.InfraCluster, n.src.FromPool)
			if !ok {
				r.setCondition(s, infrav1.AddressesClaimedCondition, false, infrav1.InvalidConfigurationReason,
					fmt.Sprintf("device %s: pool %q is not in the ProxmoxTalosCluster's spec.ipPools", n.device, n.src.FromPool))
				return stop(ctrlResultNone)
			}
			pool = p.Name
			alloc, err = ipam.ClaimFromPool(ctx, r.Client, owner, s.InfraCluster.Name, p, claim)
		} else {
			ref := n.src.IPAMPoolRef
			poolRef := ipamv1.IPPoolReference{APIGroup: ref.APIGroup, Kind: ref.Kind, Name: ref.Name}
			pool = ref.Kind + "/" + ref.Name
			alloc, err = ipam.ClaimFromProvider(ctx, r.Client, owner, poolRef, claim)
		}
		switch {
		case errors.Is(err, ipam.ErrWaiting):
			r.setCondition(s, infrav1.AddressesClaimedCondition, false, infrav1.WaitingForIPAMReason,
				fmt.Sprintf("Waiting for an address from %s for %s (%s)", pool, n.device, n.family))
			return r.waitOn(s, infrav1.AddressesClaimedCondition)
		case errors.Is(err, ipam.ErrPoolExhausted):
			r.setCondition(s, infrav1.AddressesClaimedCondition, false, infrav1.PoolExhaustedReason, err.Error())
			r.warn(s, infrav1.PoolExhaustedReason, "%s", err.Error())
			return r.waitOn(s, infrav1.AddressesClaimedCondition)
		case err != nil:
			return result{}, err
		}
		out = append(out, infrav1.AllocatedAddress{
			Device: n.device, Address: alloc.Address.String(), Gateway: alloc.Gateway, DNSServers: alloc.DNSServers, Pool: pool,
		})
	}
	s.PTM.Spec.IPAddresses = out
	r.setCondition(s, infrav1.AddressesClaimedCondition, true, infrav1.ReadyReason, "")
	r.event(s, "Normal", "AddressesClaimed", "Claimed %d static address(es)", len(out))
	return r.persistNow()
}

// ipamOwner is the owner of the machine's address claims. Their owner label is the
// machine's identity recorded in the spec (its SMBIOS uuid, chosen at placement), so a
// `clusterctl move`, which changes the object's UID, does not hide them from release.
func ipamOwner(s *Scope) ipam.Owner {
	return ipam.Owner{Object: s.PTM, GVK: infrav1.GroupVersion.WithKind("ProxmoxTalosMachine"), Cluster: s.Cluster.Name, ID: s.PTM.Spec.SMBIOSUUID}
}

// releaseAddresses deletes the machine's address claims and addresses: those labelled
// with its recorded identity, and those labelled with its UID by earlier versions.
func (r *Reconciler) releaseAddresses(ctx context.Context, s *Scope) (bool, error) {
	return ipam.ReleaseIDs(ctx, r.Client, s.PTM.Namespace, s.PTM.Spec.SMBIOSUUID, string(s.PTM.UID))
}
