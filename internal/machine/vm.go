package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"
	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// Tags every VM of this provider carries. The cluster and machine tags identify a VM
// after a crash; adoption also requires the SMBIOS uuid recorded in the spec, so a VM of a
// same-named machine in another namespace is never taken.
const TagManaged = "capi-proxmox-talos"

// ClusterTag names the cluster in a VM's tags.
func ClusterTag(cluster string) string { return "cluster-" + strings.ToLower(cluster) }

// MachineTag names the machine in a VM's tags.
func MachineTag(machine string) string { return "machine-" + strings.ToLower(machine) }

// createVM creates the VM, or adopts the one an earlier pass created. The SMBIOS uuid and
// the VMID are chosen and persisted first (in their own pass), so whatever happens after,
// the VM can be recognised and there is never a second one.
func (r *Reconciler) createVM(ctx context.Context, s *Scope) (result, error) {
	if vmCreated(s) {
		return next()
	}
	s.PTM.Status.Step = infrav1.StepCreatingVM

	// 1. Identity, recorded before anything is created.
	if s.PTM.Spec.SMBIOSUUID == "" || s.PTM.Spec.VMID == nil {
		if s.PTM.Spec.SMBIOSUUID == "" {
			s.PTM.Spec.SMBIOSUUID = uuid.NewString()
		}
		if s.PTM.Spec.VMID == nil {
			var rng proxmox.VMIDRange
			if s.Spec.VMIDRange != nil {
				rng = proxmox.VMIDRange{Min: int(s.Spec.VMIDRange.Start), Max: int(s.Spec.VMIDRange.End)}
			}
			vmid, err := s.PVE.AllocateVMID(ctx, rng)
			if err != nil {
				reason, msg := cluster.ClassifyError(err)
				r.setCondition(s, infrav1.VMProvisionedCondition, false, reason, msg)
				return r.waitOn(s, infrav1.VMProvisionedCondition)
			}
			s.PTM.Spec.VMID = ptr.To(int32(vmid))
		}
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
			fmt.Sprintf("Creating VM %d on node %s", *s.PTM.Spec.VMID, s.PTM.Spec.Node))
		return r.persistNow()
	}
	node, vmid := s.PTM.Spec.Node, int(*s.PTM.Spec.VMID)

	// 2. Adopt a VM of this machine that exists already (crash after create).
	found, err := s.PVE.FindVMs(ctx, proxmox.VMFilter{
		Tags:       []string{ClusterTag(s.Cluster.Name), MachineTag(s.PTM.Name)},
		SMBIOSUUID: s.PTM.Spec.SMBIOSUUID,
	})
	if err != nil {
		return r.vmError(s, err)
	}
	adopted := false
	for _, vm := range found {
		if vm.VMID != vmid || vm.Node != node {
			// Ours by tags and uuid but not where the spec says: never guess, tell.
			r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InvalidConfigurationReason,
				fmt.Sprintf("VM %d on node %s carries this machine's tags and uuid but the spec records VM %d on %s", vm.VMID, vm.Node, vmid, node))
			return stop(ctrlResultNone)
		}
		adopted = true
	}

	// 3. Create.
	if !adopted {
		spec, err := r.vmSpec(s)
		if err != nil {
			r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InvalidConfigurationReason, err.Error())
			return stop(ctrlResultNone)
		}
		res, err := s.PVE.CreateVM(ctx, spec)
		if errors.Is(err, proxmox.ErrAlreadyExists) {
			// The search above found no VM with this machine's tags and uuid, so the VM at
			// this VMID belongs to someone else (another tool took the id between allocation
			// and creation). Forget the id and allocate another on the next pass; nothing of
			// ours exists yet, so nothing can be duplicated or leaked.
			r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
				fmt.Sprintf("VMID %d is taken by a VM that is not this machine's; allocating another", vmid))
			r.warn(s, "VMIDConflict", "VMID %d is taken by another VM; allocating another", vmid)
			s.PTM.Spec.VMID = nil
			return r.persistNow()
		}
		if err != nil {
			return r.vmError(s, err)
		}
		adopted = res.AlreadyExisted
		if !adopted {
			r.event(s, "Normal", "VMCreated", "Created VM %d on node %s", vmid, node)
		}
	}
	if adopted {
		r.event(s, "Normal", "VMAdopted", "Adopted existing VM %d on node %s", vmid, node)
	}

	// 4. Grow the imported disk to the requested size (grow-only, so repeating is safe).
	if err := s.PVE.ResizeDisk(ctx, node, vmid, "scsi0", fmt.Sprintf("%dG", s.Spec.BootDisk.SizeGiB)); err != nil {
		return r.vmError(s, err)
	}
	r.setCondition(s, infrav1.VMProvisionedCondition, true, infrav1.ReadyReason, fmt.Sprintf("VM %d on node %s", vmid, node))
	return next()
}

func (r *Reconciler) vmError(s *Scope, err error) (result, error) {
	reason, msg := cluster.ClassifyError(err)
	r.setCondition(s, infrav1.VMProvisionedCondition, false, reason, msg)
	if errors.Is(err, proxmox.ErrLockTimeout) || errors.Is(err, proxmox.ErrPermissionDenied) {
		return r.waitOn(s, infrav1.VMProvisionedCondition)
	}
	return result{}, err
}

// vmSpec turns the (defaulted) machine spec into the Proxmox VM definition.
func (r *Reconciler) vmSpec(s *Scope) (proxmox.VMSpec, error) {
	if s.imageVolID == "" {
		return proxmox.VMSpec{}, errors.New("the Talos image volume is unknown")
	}
	iso, err := BootISOVolID(s)
	if err != nil {
		return proxmox.VMSpec{}, err
	}
	sp := s.Spec
	talos := infrav1.EffectiveTalos(s.ClusterSpec.Talos, sp.Talos)
	tags := append([]string{TagManaged, ClusterTag(s.Cluster.Name), MachineTag(s.PTM.Name)}, sp.Tags...)
	spec := proxmox.VMSpec{
		Node:       sp.Node,
		VMID:       int(*sp.VMID),
		Name:       s.Machine.Name,
		Pool:       sp.Pool,
		Tags:       tags,
		Sockets:    int(sp.Sockets),
		Cores:      int(sp.Cores),
		CPUType:    sp.CPUType,
		MemoryMiB:  int(sp.MemoryMiB),
		BalloonMiB: ptr.To(int(ptr.Deref(sp.BalloonMiB, 0))),
		Machine:    string(sp.MachineType),
		BIOS:       strings.ToLower(string(sp.Firmware)),
		BootDisk: proxmox.Disk{
			Slot: "scsi0", Storage: sp.BootDisk.Storage, ImportFrom: s.imageVolID,
			Discard: ptr.Deref(sp.BootDisk.Discard, true), SSD: ptr.Deref(sp.BootDisk.SSD, true), Cache: sp.BootDisk.Cache,
		},
		CDROM:         iso,
		CDROMSlot:     BootISOSlot,
		Agent:         slices.Contains(talos.Extensions, imagefactory.ExtensionQEMUGuestAgent),
		SerialConsole: true,
		// No rng0: qemu-server lets only the user root@pam set it ("only
		// root can set 'rng0' config"), and the provider authenticates with
		// an API token, which is never root@pam.
		RNG:         false,
		SMBIOSUUID:  sp.SMBIOSUUID,
		OnBoot:      true,
		Description: fmt.Sprintf("Cluster API machine %s/%s of cluster %s", s.PTM.Namespace, s.Machine.Name, s.Cluster.Name),
	}
	for _, d := range sp.ExtraDisks {
		spec.ExtraDisks = append(spec.ExtraDisks, proxmox.Disk{
			Slot: d.Device, Storage: d.Storage, SizeGiB: int(d.SizeGiB),
			Discard: ptr.Deref(d.Discard, true), SSD: ptr.Deref(d.SSD, true), Cache: d.Cache,
		})
	}
	for _, n := range sp.NetworkDevices {
		nic := proxmox.NIC{Slot: n.Name, Model: n.Model, Bridge: n.Bridge, MAC: MACAddress(s.PTM, n.Name)}
		if n.VLAN != nil {
			nic.VLAN = int(*n.VLAN)
		}
		if n.MTU != nil {
			nic.MTU = int(*n.MTU)
		}
		spec.NICs = append(spec.NICs, nic)
	}
	return spec, nil
}
