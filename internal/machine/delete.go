package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

var errNotFound = proxmox.ErrNotFound

// ReconcileDelete removes everything the machine created, in the reverse order of
// creation: the VM (graceful shutdown, a hard stop when the guest does not answer or the
// machine was remediated, then destroy with purge and unreferenced disks), the volumes
// recorded in spec.ownedVolumes (boot ISO, metal image), the addresses, and finally the
// finalizer. Every Proxmox task is started and followed on later passes, never waited
// for. Nothing is destroyed that does not show this machine's identity: a VM of someone
// else at the recorded VMID is left alone (Warning event, condition), and this machine's
// VM is followed wherever it moved. A node that does not answer is reported and retried
// with backoff until it is back or an operator abandons the VM (AbandonVMAnnotation).
func (r *Reconciler) ReconcileDelete(ctx context.Context, s *Scope) (ctrl.Result, error) {
	s.PTM.Status.Step = infrav1.StepDeleting
	abandon := s.PTM.Annotations[infrav1.AbandonVMAnnotation] == "true"
	if s.PVE == nil && !abandon {
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason,
			"Waiting for Proxmox credentials to delete the VM")
		out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
		return out.res, nil
	}

	if abandon {
		r.abandonVM(s)
	} else {
		// A hand-over an earlier pass began is finished, whatever the node does now: the
		// successor owns the VM and the address claims.
		succ, err := r.successor(ctx, s)
		if err != nil {
			return ctrl.Result{}, err
		}
		if succ != nil {
			return r.handOver(ctx, s, nil)
		}
		res, done := r.deleteVM(ctx, s)
		if s.handover != nil {
			return r.handOver(ctx, s, s.handover)
		}
		if !done {
			return res, nil
		}
		if res, done := r.deleteOwnedVolumes(ctx, s); !done {
			return res, nil
		}
	}

	// Addresses go last: they are the machine's identity on the network until the VM is gone.
	released, err := r.releaseAddresses(ctx, s)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !released {
		r.setCondition(s, infrav1.AddressesClaimedCondition, false, infrav1.DeletingReason, "Releasing addresses")
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}, nil
	}
	r.forget(s)
	controllerutil.RemoveFinalizer(s.PTM, infrav1.MachineFinalizer)
	return ctrl.Result{}, nil
}

// forget drops what this process remembers about a machine that is going away.
func (r *Reconciler) forget(s *Scope) {
	r.placements.Delete(s.PTM.UID)
	r.fresh.Delete(s.PTM.UID)
	r.sentCreates.Delete(s.PTM.UID)
	r.offlineSince.Delete(s.PTM.UID)
	r.taskStarts.Delete(s.PTM.UID)
}

// Proxmox task types the deletion starts.
const (
	taskShutdown = "qmshutdown"
	taskStop     = "qmstop"
	taskDestroy  = "qmdestroy"
)

// abandonVM finishes the deletion without the VM and the recorded volumes, on an
// operator's request, and says what is left behind.
func (r *Reconciler) abandonVM(s *Scope) {
	what := "no VM"
	if s.PTM.Spec.VMID != nil {
		what = fmt.Sprintf("VM %d (smbios uuid %s) on node %s", *s.PTM.Spec.VMID, s.PTM.Spec.SMBIOSUUID, s.PTM.Spec.Node)
	}
	var vols []string
	for _, v := range s.PTM.Spec.OwnedVolumes {
		vols = append(vols, v.VolID+" on "+v.Node)
	}
	if len(vols) > 0 {
		what += " and volumes " + strings.Join(vols, ", ")
	}
	r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.VMAbandonedReason,
		"Abandoned on request ("+infrav1.AbandonVMAnnotation+"): "+what+" left behind")
	r.warn(s, infrav1.VMAbandonedReason, "Deletion abandons %s as requested by annotation %s; remove them by hand if the node comes back", what, infrav1.AbandonVMAnnotation)
	s.PTM.Status.Task = nil
	s.PTM.Spec.OwnedVolumes = nil
}

// deleteVM drives the VM towards gone, one Proxmox task per pass. done is true once no VM
// of this machine exists.
func (r *Reconciler) deleteVM(ctx context.Context, s *Scope) (ctrl.Result, bool) {
	if s.PTM.Spec.VMID == nil {
		// The VMID is recorded before any create request, so no VM was ever created.
		return ctrl.Result{}, true
	}
	vmid := int(*s.PTM.Spec.VMID)

	// 1. A task started on an earlier pass.
	escalate := false
	var followed string
	if t := s.PTM.Status.Task; t != nil {
		followed = t.Type
	}
	out, _, err := r.followTask(ctx, s, taskCreate, taskShutdown, taskStop, taskDestroy)
	switch out {
	case taskRunning:
		t := s.PTM.Status.Task
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason,
			fmt.Sprintf("Waiting for Proxmox task %s of VM %d on node %s (running %s)", t.Type, vmid, t.Node, taskRunningSince(s)))
		return ctrl.Result{RequeueAfter: r.taskRequeue(s)}, false
	case taskFailed:
		reason, msg := cluster.ClassifyError(err)
		r.warn(s, infrav1.TaskFailedReason, "Deleting VM %d: %s", vmid, msg)
		r.setCondition(s, infrav1.VMProvisionedCondition, false, reason, "Deleting the VM: "+msg)
		if followed != taskShutdown {
			// A stop or destroy that failed (lock timeout, storage error) is retried
			// with backoff; the condition says why meanwhile.
			out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
			return out.res, false
		}
		// A shutdown that failed (guest not answering, timeout) is followed by a hard stop.
		escalate = true
	case taskSucceeded:
	default:
		if err != nil {
			return r.deleteError(s, err), false
		}
	}

	// 2. Where is the VM, and is it ours?
	loc, err := r.locateVM(ctx, s)
	if err != nil {
		return r.deleteError(s, err), false
	}
	switch loc.verdict {
	case vmOurs:
		r.offlineSince.Delete(s.PTM.UID)
		if loc.node != s.PTM.Spec.Node {
			r.event(s, corev1.EventTypeNormal, "VMMoved", "VM %d moved from node %s to %s", vmid, s.PTM.Spec.Node, loc.node)
			s.PTM.Spec.Node = loc.node
		}
		return r.destroyVM(ctx, s, loc.node, vmid, escalate), false
	case vmCreating:
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason,
			fmt.Sprintf("VM %d on node %s is still being created (lock create); deleting it once the create has ended", vmid, loc.node))
		out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
		return out.res, false
	case vmForeign:
		what := describeVM(loc.node, vmid, loc.cfg)
		msg := fmt.Sprintf("%s does not show this machine's identity (smbios uuid %s, tags %s;%s); it was left untouched",
			what, s.PTM.Spec.SMBIOSUUID, TagManaged, MachineTag(identityName(s.PTM)))
		if c := conditions.Get(s.PTM, infrav1.VMProvisionedCondition); c == nil || c.Message != msg {
			r.warn(s, infrav1.ForeignVMReason, "%s", msg)
		}
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.ForeignVMReason, msg)
	case vmAbsent:
		if len(loc.offline) > 0 {
			if due, pending := r.handoverDue(s, loc.offline); due {
				s.handover = loc.offline
				return ctrl.Result{}, false
			} else if pending {
				// The condition says when the hand-over comes; check the node again meanwhile.
				return ctrl.Result{RequeueAfter: min(r.Timing.NodeLossHandoverAfter/4+time.Second, r.Timing.WithDefaults().Max)}, false
			}
			msg := fmt.Sprintf("VM %d is not on any node that answers; Proxmox node(s) %s do not answer and may hold it. Retrying; if the node is gone for good, annotate the ProxmoxTalosMachine with %s=true to abandon the VM",
				vmid, strings.Join(loc.offline, ", "), infrav1.AbandonVMAnnotation)
			r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.NodeOfflineReason, msg)
			r.warn(s, infrav1.NodeOfflineReason, "%s", msg)
			out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
			return out.res, false
		}
	}

	// 3. Not (or no longer) at the recorded VMID: a VM of this machine elsewhere, at any
	// VMID, is still found by identity and deleted.
	others, err := r.findOurVMs(ctx, s)
	if err != nil {
		return r.deleteError(s, err), false
	}
	for _, vm := range others {
		if vm.VMID == vmid {
			continue
		}
		r.event(s, corev1.EventTypeNormal, "VMFound", "VM %d on node %s shows this machine's identity; deleting it", vm.VMID, vm.Node)
		s.PTM.Spec.VMID = ptr.To(int32(vm.VMID))
		s.PTM.Spec.Node = vm.Node
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}, false
	}
	if loc.verdict != vmForeign {
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason, "The VM is deleted")
	}
	s.PTM.Status.PowerState = ""
	return ctrl.Result{}, true
}

// destroyVM takes the next step towards destroying this machine's VM at node/vmid.
func (r *Reconciler) destroyVM(ctx context.Context, s *Scope, node string, vmid int, escalate bool) ctrl.Result {
	st, err := s.PVE.VMStatus(ctx, node, vmid)
	if errors.Is(err, proxmox.ErrNotFound) {
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min} // moved or gone: look again
	}
	if err != nil {
		return r.deleteError(s, err)
	}
	s.PTM.Status.PowerState = st.Status
	if st.Lock != "" {
		// Migration, backup, snapshot...: Proxmox refuses stop and destroy meanwhile.
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason,
			fmt.Sprintf("VM %d on node %s is locked (%s); deleting it once the lock is released", vmid, node, st.Lock))
		out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
		return out.res
	}
	var (
		upid, typ, what string
	)
	switch {
	case st.Running() && (escalate || r.remediating(s)):
		typ, what = taskStop, "Stopping"
		upid, err = s.PVE.StartStopVM(ctx, node, vmid)
	case st.Running():
		// Give Talos the chance to leave etcd and drain cleanly; Proxmox stops the VM
		// hard when the timeout passes (forceStop).
		typ, what = taskShutdown, "Shutting down"
		upid, err = s.PVE.StartShutdownVM(ctx, node, vmid, r.shutdownTimeout(), true)
	default:
		typ, what = taskDestroy, "Destroying"
		upid, err = s.PVE.StartDeleteVM(ctx, node, vmid)
	}
	if errors.Is(err, proxmox.ErrNotFound) {
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}
	}
	if err != nil {
		return r.deleteError(s, err)
	}
	r.recordStarted(s, upid, typ, node, vmid)
	r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.DeletingReason, fmt.Sprintf("%s VM %d on node %s", what, vmid, node))
	if typ == taskDestroy {
		r.event(s, corev1.EventTypeNormal, "VMDeleting", "Destroying VM %d on node %s", vmid, node)
	}
	return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}
}

func (r *Reconciler) shutdownTimeout() time.Duration {
	if r.Timing.ShutdownTimeout > 0 {
		return r.Timing.ShutdownTimeout
	}
	return 60 * time.Second
}

// remediating reports a machine deleted because it is unhealthy (a MachineHealthCheck
// failed, or the owner Machine is gone): a guest that is not answering would only make
// the graceful shutdown wait its full timeout, so the VM is stopped hard.
func (r *Reconciler) remediating(s *Scope) bool {
	if s.Machine == nil {
		return true
	}
	// The annotation counts by its presence, as for Cluster API: its documented form is
	// `kubectl annotate machine <name> cluster.x-k8s.io/remediate-machine=""`.
	if _, ok := s.Machine.Annotations[clusterv1.RemediateMachineAnnotation]; ok ||
		conditions.IsFalse(s.Machine, clusterv1.MachineHealthCheckSucceededCondition) {
		return true
	}
	// OwnerRemediated outlives a recovery: the MachineHealthCheck sets HealthCheckSucceeded
	// back to True but leaves OwnerRemediated to the owner, and an owner that does not
	// remediate (TalosControlPlane) never clears it. A machine whose check passed again is
	// healthy, and its later deletion (a rollout) shuts it down gracefully.
	return conditions.Get(s.Machine, clusterv1.MachineOwnerRemediatedCondition) != nil &&
		!conditions.IsTrue(s.Machine, clusterv1.MachineHealthCheckSucceededCondition)
}

// deleteError reports a failed Proxmox call of the deletion and requeues with backoff.
func (r *Reconciler) deleteError(s *Scope, err error) ctrl.Result {
	reason, msg := cluster.ClassifyError(err)
	if errors.Is(err, proxmox.ErrNodeOffline) {
		reason = infrav1.NodeOfflineReason
		msg += "; if the node is gone for good, annotate the ProxmoxTalosMachine with " + infrav1.AbandonVMAnnotation + "=true to abandon the VM"
	}
	r.setCondition(s, infrav1.VMProvisionedCondition, false, reason, "Deleting the VM: "+msg)
	r.warn(s, reason, "Deleting VM: %s", msg)
	out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
	return out.res
}

// deleteOwnedVolumes deletes the recorded volumes (boot ISO, metal image). Machines
// created before volumes were recorded fall back to the names they would have had.
func (r *Reconciler) deleteOwnedVolumes(ctx context.Context, s *Scope) (ctrl.Result, bool) {
	if len(s.PTM.Spec.OwnedVolumes) == 0 {
		if err := r.deleteLegacyVolumes(ctx, s); err != nil {
			reason, msg := cluster.ClassifyError(err)
			r.setCondition(s, infrav1.BootISOReadyCondition, false, reason, "Deleting the machine's volumes: "+msg)
			out, _ := r.waitOn(s, infrav1.BootISOReadyCondition)
			return out.res, false
		}
		return ctrl.Result{}, true
	}
	for _, v := range slices.Clone(s.PTM.Spec.OwnedVolumes) {
		if err := s.PVE.DeleteVolume(ctx, v.Node, v.VolID); err != nil {
			reason, msg := cluster.ClassifyError(err)
			if errors.Is(err, proxmox.ErrNodeOffline) {
				reason = infrav1.NodeOfflineReason
				msg += "; if the node is gone for good, annotate the ProxmoxTalosMachine with " + infrav1.AbandonVMAnnotation + "=true"
			}
			r.setCondition(s, infrav1.BootISOReadyCondition, false, reason, "Deleting volume "+v.VolID+": "+msg)
			out, _ := r.waitOn(s, infrav1.BootISOReadyCondition)
			return out.res, false
		}
		r.event(s, corev1.EventTypeNormal, "VolumeDeleted", "Deleted volume %s", v.VolID)
		forgetVolume(s, v)
	}
	s.PTM.Status.BootISO = ""
	return ctrl.Result{}, true
}

// deleteLegacyVolumes removes the boot ISO and metal image of a machine whose volumes
// were not recorded (created by an earlier version), by the names that version used.
func (r *Reconciler) deleteLegacyVolumes(ctx context.Context, s *Scope) error {
	if s.PTM.Spec.Node == "" {
		return nil
	}
	if s.PTM.Status.BootISO != "" {
		if err := s.PVE.DeleteVolume(ctx, s.PTM.Spec.Node, s.PTM.Status.BootISO); err != nil {
			return err
		}
		s.PTM.Status.BootISO = ""
	}
	if s.Machine == nil {
		return nil
	}
	return r.deleteMetalImage(ctx, s)
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
