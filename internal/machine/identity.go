package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// A VM is this machine's when it shows the machine's identity: the SMBIOS uuid recorded
// in spec.smbiosUUID (random, chosen before anything was created) and the ownership tags
// (the provider's tag and the machine's tag). The name is only a cross-check reported to
// people: users may rename VMs. The recorded node and VMID say where to look first, never
// who a VM is: a VM moves between nodes, and another tool may reuse a VMID.

// verdict is what a VM config is to this machine.
type verdict int

const (
	// vmAbsent: no VM with the VMID on the node.
	vmAbsent verdict = iota
	// vmOurs: the VM shows this machine's identity.
	vmOurs
	// vmCreating: a create is in progress (config holds only "lock: create"): whose
	// it is cannot be read from the config yet.
	vmCreating
	// vmForeign: a complete VM that is not this machine's.
	vmForeign
)

func (v verdict) String() string {
	return [...]string{"absent", "ours", "being created", "foreign"}[v]
}

// judge tells whether cfg is this machine's VM.
func judge(s *Scope, cfg proxmox.VMConfig) verdict {
	if cfg == nil {
		return vmAbsent
	}
	uuid := cfg.SMBIOSUUID()
	if uuid == "" && cfg["lock"] == "create" {
		return vmCreating
	}
	if s.PTM.Spec.SMBIOSUUID != "" && strings.EqualFold(uuid, s.PTM.Spec.SMBIOSUUID) &&
		hasAllTags(cfg.Tags(), TagManaged, MachineTag(identityName(s.PTM))) {
		return vmOurs
	}
	return vmForeign
}

func hasAllTags(have []string, want ...string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(have, func(h string) bool { return strings.EqualFold(h, w) }) {
			return false
		}
	}
	return true
}

// describeVM names a VM for events and conditions: where it is and what identity it shows.
func describeVM(node string, vmid int, cfg proxmox.VMConfig) string {
	return fmt.Sprintf("VM %d on node %s (name %q, smbios uuid %q, tags %q)", vmid, node, cfg.Name(), cfg.SMBIOSUUID(), strings.Join(cfg.Tags(), ";"))
}

// location is where the VM with the recorded VMID was found.
type location struct {
	node    string
	vmid    int
	cfg     proxmox.VMConfig
	verdict verdict
	// offline are nodes that did not answer; the VM may be on one of them.
	offline []string
}

// locateVM finds the VM with the recorded VMID: on the recorded node first (one call in
// the common case), else on every other node. A VMID is unique in a Proxmox cluster, so
// its config is on one node at most; looking node by node (rather than in
// /cluster/resources, a periodic snapshot) finds a VM that moved a moment ago.
func (r *Reconciler) locateVM(ctx context.Context, s *Scope) (location, error) {
	loc := location{vmid: int(*s.PTM.Spec.VMID)}
	recorded := s.PTM.Spec.Node
	if recorded != "" {
		found, err := r.configAt(ctx, s, recorded, &loc)
		if err != nil || found {
			return loc, err
		}
	}
	nodes, err := s.PVE.Nodes(ctx)
	if err != nil {
		return loc, err
	}
	for _, n := range nodes {
		if n.Name == recorded {
			continue
		}
		if !n.Online {
			loc.offline = append(loc.offline, n.Name)
			continue
		}
		found, err := r.configAt(ctx, s, n.Name, &loc)
		if err != nil || found {
			return loc, err
		}
	}
	return loc, nil
}

func (r *Reconciler) configAt(ctx context.Context, s *Scope, node string, loc *location) (bool, error) {
	cfg, err := s.PVE.VMConfig(ctx, node, loc.vmid)
	switch {
	case err == nil:
		loc.node, loc.cfg, loc.verdict = node, cfg, judge(s, cfg)
		return true, nil
	case errors.Is(err, proxmox.ErrNotFound):
		return false, nil
	case errors.Is(err, proxmox.ErrNodeOffline):
		loc.offline = append(loc.offline, node)
		return false, nil
	default:
		return false, err
	}
}

// findOurVMs searches the whole cluster for VMs showing this machine's identity, at any
// VMID (tags from /cluster/resources, then the uuid from each candidate's config).
func (r *Reconciler) findOurVMs(ctx context.Context, s *Scope) ([]proxmox.VMRef, error) {
	if s.PTM.Spec.SMBIOSUUID == "" {
		return nil, nil
	}
	return s.PVE.FindVMs(ctx, proxmox.VMFilter{
		Tags:       []string{TagManaged, MachineTag(identityName(s.PTM))},
		SMBIOSUUID: s.PTM.Spec.SMBIOSUUID,
	})
}
