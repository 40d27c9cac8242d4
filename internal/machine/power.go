package machine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// startVM powers the VM on until the machine is provisioned. After that a stopped VM is
// reported, not restarted: someone stopped it on purpose, or a MachineHealthCheck should
// decide what happens to it.
//
// A VM seen running is not read on every pass. While the machine waits for its Node (which
// only the workload cluster can tell) it is not read at all; once the Node is Ready, each
// pass (the resync, or any event) checks it in the /cluster/resources snapshot that every
// machine on the same Proxmox shares for StatusMaxAge, and reads the VM itself only when
// the snapshot does not show it running where recorded (stopped, moved), unless the VM
// started too recently for any snapshot to show it.
func (r *Reconciler) startVM(ctx context.Context, s *Scope) (result, error) {
	node, vmid := s.PTM.Spec.Node, int(*s.PTM.Spec.VMID)
	if conditions.IsTrue(s.PTM, infrav1.VMRunningCondition) && s.PTM.Status.PowerState == "running" {
		if !conditions.IsTrue(s.PTM, infrav1.NodeReadyCondition) {
			return next()
		}
		if r.startedRecently(s) || r.runningInSnapshot(ctx, s, node, vmid) {
			return next()
		}
	}
	if s.justCreated && !ptr.Deref(s.PTM.Status.Initialization.Provisioned, false) {
		// Created stopped a moment ago by this machine's own task: start it without a read.
		return r.powerOn(ctx, s, node, vmid, proxmox.VMStatus{Status: "stopped"})
	}
	st, err := s.PVE.VMStatus(ctx, node, vmid)
	if errors.Is(err, proxmox.ErrNotFound) || errors.Is(err, proxmox.ErrNodeOffline) {
		// Not on the recorded node (or the node does not answer): the VM may have moved
		// (live migration, HA relocation, maintenance). The node is where the VM is, not
		// who it is: find it by identity and record where it is now.
		loc, lerr := r.locateVM(ctx, s)
		if lerr != nil {
			reason, msg := cluster.ClassifyError(lerr)
			r.setCondition(s, infrav1.VMRunningCondition, false, reason, msg)
			return r.waitOn(s, infrav1.VMRunningCondition)
		}
		switch {
		case loc.verdict == vmOurs:
			if loc.node != node {
				r.event(s, corev1.EventTypeNormal, "VMMoved", "VM %d moved from node %s to %s", vmid, node, loc.node)
				s.PTM.Spec.Node, node = loc.node, loc.node
			}
			st, err = s.PVE.VMStatus(ctx, node, vmid)
		case loc.verdict == vmAbsent && len(loc.offline) > 0:
			r.setCondition(s, infrav1.VMRunningCondition, false, infrav1.NodeOfflineReason,
				fmt.Sprintf("Proxmox node(s) %s do not answer; VM %d is not on any node that does", strings.Join(loc.offline, ", "), vmid))
			return r.waitOn(s, infrav1.VMRunningCondition)
		default:
			s.PTM.Status.PowerState = ""
			msg := "The VM was deleted outside Cluster API; delete the Machine to replace it"
			if loc.verdict == vmForeign {
				msg = fmt.Sprintf("VMID %d now holds %s, not this machine's VM; delete the Machine to replace it", vmid, describeVM(loc.node, vmid, loc.cfg))
			}
			r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.VMNotFoundReason, msg)
			r.warn(s, infrav1.VMNotFoundReason, "VM %d of this machine exists on no Proxmox node", vmid)
			return stop(ctrlResultNone)
		}
	}
	if err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.VMRunningCondition, false, reason, msg)
		return r.waitOn(s, infrav1.VMRunningCondition)
	}
	s.PTM.Status.PowerState = st.Status
	if st.Running() {
		r.setCondition(s, infrav1.VMRunningCondition, true, infrav1.ReadyReason, "")
		return next()
	}
	if ptr.Deref(s.PTM.Status.Initialization.Provisioned, false) {
		r.setCondition(s, infrav1.VMRunningCondition, false, infrav1.PoweredOffReason, "The VM is "+st.Status)
		return next()
	}

	return r.powerOn(ctx, s, node, vmid, st)
}

// powerOn starts the VM whose last known status is st.
func (r *Reconciler) powerOn(ctx context.Context, s *Scope, node string, vmid int, st proxmox.VMStatus) (result, error) {
	s.PTM.Status.Step = infrav1.StepStartingVM
	if err := s.PVE.StartVM(ctx, node, vmid); err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.VMRunningCondition, false, reason, msg)
		r.warn(s, reason, "Starting VM %d: %s", vmid, msg)
		return r.waitOn(s, infrav1.VMRunningCondition)
	}
	r.event(s, "Normal", "VMStarted", "Started VM %d on node %s", vmid, node)
	if st.HAState != "" {
		// HA-managed: the start task (hastart) only asks the HA manager, which starts
		// the VM a moment later. Report it running once Proxmox shows it running.
		r.setCondition(s, infrav1.VMRunningCondition, false, infrav1.InProgressReason, "The HA manager is starting the VM")
		return r.waitOn(s, infrav1.VMRunningCondition)
	}
	s.PTM.Status.PowerState = "running"
	r.setCondition(s, infrav1.VMRunningCondition, true, infrav1.ReadyReason, "")
	return next()
}

// pvestatdRound is how often pvestatd broadcasts the status /cluster/resources reports.
const pvestatdRound = 10 * time.Second

// startedRecently reports whether this machine saw its VM start so recently that a
// snapshot could not show it running yet: a snapshot up to StatusMaxAge old, of pvestatd's
// last round. Reading the VM itself then tells nothing new (a burst's machines reach Node
// Ready seconds after their start), and a VM that stopped right after its start is seen at
// the first pass after that time, as the Node turning NotReady shows it too.
func (r *Reconciler) startedRecently(s *Scope) bool {
	c := conditions.Get(s.PTM, infrav1.VMRunningCondition)
	return c != nil && time.Since(c.LastTransitionTime.Time) < r.Timing.withDefaults().StatusMaxAge+pvestatdRound
}

// runningInSnapshot reports whether the shared /cluster/resources snapshot shows the VM
// running on node. Any doubt (an error, another node, another status) is false: the
// caller then reads the VM itself.
func (r *Reconciler) runningInSnapshot(ctx context.Context, s *Scope, node string, vmid int) bool {
	vms, err := s.PVE.ClusterVMs(ctx, r.Timing.withDefaults().StatusMaxAge)
	if err != nil {
		return false
	}
	for _, vm := range vms {
		if vm.VMID == vmid {
			return vm.Node == node && vm.Status == "running"
		}
	}
	return false
}
