package machine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

var errNotFound = proxmox.ErrNotFound

// ReconcileDelete removes everything the machine created, in the reverse order of
// creation: the VM (graceful shutdown, then a hard stop, then destroy with purge and
// unreferenced disks), the boot ISO, the addresses, and finally the finalizer. Anything
// already gone counts as done, so deletion works from every state, including before the
// VM existed. Failures (lock timeouts...) requeue with backoff.
func (r *Reconciler) ReconcileDelete(ctx context.Context, s *Scope) (ctrl.Result, error) {
	s.PTM.Status.Step = infrav1.StepDeleting
	if s.PVE == nil {
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason,
			"Waiting for Proxmox credentials to delete the VM")
		out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
		return out.res, nil
	}

	if err := r.deleteVMs(ctx, s); err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.VMProvisionedCondition, false, reason, "Deleting the VM: "+msg)
		r.warn(s, reason, "Deleting VM: %s", msg)
		out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
		return out.res, nil
	}
	r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason, "The VM is deleted")
	s.PTM.Status.PowerState = ""

	if s.PTM.Spec.Node != "" {
		if err := r.deleteBootISO(ctx, s); err != nil {
			reason, msg := cluster.ClassifyError(err)
			r.setCondition(s, infrav1.BootISOReadyCondition, false, reason, "Deleting the boot ISO: "+msg)
			out, _ := r.waitOn(s, infrav1.BootISOReadyCondition)
			return out.res, nil
		}
	}

	if err := r.deleteMetalImage(ctx, s); err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.ImageReadyCondition, false, reason, "Deleting the machine's metal image: "+msg)
		out, _ := r.waitOn(s, infrav1.ImageReadyCondition)
		return out.res, nil
	}

	// Addresses go last: the metal image's name above is derived from them.
	released, err := ipam.Release(ctx, r.Client, s.PTM)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !released {
		r.setCondition(s, infrav1.AddressesClaimedCondition, false, infrav1.DeletingReason, "Releasing addresses")
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}, nil
	}
	r.placements.Delete(s.PTM.UID)
	controllerutil.RemoveFinalizer(s.PTM, infrav1.MachineFinalizer)
	return ctrl.Result{}, nil
}

// deleteVMs deletes the recorded VM and any other VM carrying this machine's tags and
// uuid (there should be none; it is cheap insurance against leaks).
func (r *Reconciler) deleteVMs(ctx context.Context, s *Scope) error {
	type target struct {
		node string
		vmid int
	}
	var targets []target
	if s.PTM.Spec.VMID != nil && s.PTM.Spec.Node != "" {
		targets = append(targets, target{s.PTM.Spec.Node, int(*s.PTM.Spec.VMID)})
	}
	if s.PTM.Spec.SMBIOSUUID != "" {
		found, err := s.PVE.FindVMs(ctx, proxmox.VMFilter{
			Tags:       []string{ClusterTag(s.Cluster.Name), MachineTag(s.PTM.Name)},
			SMBIOSUUID: s.PTM.Spec.SMBIOSUUID,
		})
		if err != nil {
			return err
		}
		for _, vm := range found {
			t := target{vm.Node, vm.VMID}
			if len(targets) == 0 || targets[0] != t {
				targets = append(targets, t)
			}
		}
	}
	for _, t := range targets {
		if err := r.deleteVM(ctx, s, t.node, t.vmid); err != nil {
			return fmt.Errorf("VM %d on node %s: %w", t.vmid, t.node, err)
		}
	}
	return nil
}

func (r *Reconciler) deleteVM(ctx context.Context, s *Scope, node string, vmid int) error {
	st, err := s.PVE.VMStatus(ctx, node, vmid)
	if errors.Is(err, proxmox.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Running() {
		timeout := r.Timing.ShutdownTimeout
		if timeout <= 0 {
			timeout = 60 * time.Second
		}
		// Give Talos the chance to leave etcd and drain cleanly; stop hard if it does not.
		if err := s.PVE.ShutdownVM(ctx, node, vmid, timeout); err != nil && !errors.Is(err, proxmox.ErrNotFound) {
			if err := s.PVE.StopVM(ctx, node, vmid); err != nil && !errors.Is(err, proxmox.ErrNotFound) {
				return err
			}
		}
	}
	// DeleteVM waits for any stop task, then destroys with purge=1 and
	// destroy-unreferenced-disks=1; a missing VM is success.
	if err := s.PVE.DeleteVM(ctx, node, vmid); err != nil {
		return err
	}
	r.event(s, "Normal", "VMDeleted", "Deleted VM %d on node %s", vmid, node)
	return nil
}

// deleteMetalImage removes a metal-platform machine's own disk image: its schematic carries
// the machine's hostname and addresses (META key 10), so no other machine can use it and
// keeping it would leak one image per machine ever created. nocloud images are shared and
// stay. The name is computed offline from the same inputs that named it at creation.
func (r *Reconciler) deleteMetalImage(ctx context.Context, s *Scope) error {
	talos := infrav1.EffectiveTalos(s.ClusterSpec.Talos, s.Spec.Talos)
	if talos.Platform != infrav1.TalosPlatformMetal || s.PTM.Spec.Node == "" || len(s.PTM.Spec.IPAddresses) == 0 {
		return nil // never got far enough to have an image of its own
	}
	sc, err := r.schematic(s, talos)
	if err != nil {
		return nil // no valid schematic, so no image was ever made from it
	}
	id, err := imagefactory.SchematicID(sc)
	if err != nil {
		return nil
	}
	ref := imagefactory.ImageRef{SchematicID: id, TalosVersion: talos.Version, Platform: string(talos.Platform), Arch: talos.Architecture}
	filename, err := ref.StorageName()
	if err != nil {
		return nil
	}
	volid := s.ClusterSpec.ImageStorage + ":import/" + filename
	if err := s.PVE.DeleteVolume(ctx, s.PTM.Spec.Node, volid); err != nil {
		return err
	}
	return nil
}
