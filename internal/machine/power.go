package machine

import (
	"context"
	"errors"

	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// startVM powers the VM on until the machine is provisioned. After that a stopped VM is
// reported, not restarted: someone stopped it on purpose, or a MachineHealthCheck should
// decide what happens to it.
func (r *Reconciler) startVM(ctx context.Context, s *Scope) (result, error) {
	node, vmid := s.PTM.Spec.Node, int(*s.PTM.Spec.VMID)
	st, err := s.PVE.VMStatus(ctx, node, vmid)
	if errors.Is(err, proxmox.ErrNotFound) {
		s.PTM.Status.PowerState = ""
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.VMNotFoundReason,
			"The VM was deleted outside Cluster API; delete the Machine to replace it")
		r.warn(s, infrav1.VMNotFoundReason, "VM %d on node %s no longer exists", vmid, node)
		return stop(ctrlResultNone)
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

	s.PTM.Status.Step = infrav1.StepStartingVM
	if err := s.PVE.StartVM(ctx, node, vmid); err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.VMRunningCondition, false, reason, msg)
		r.warn(s, reason, "Starting VM %d: %s", vmid, msg)
		return r.waitOn(s, infrav1.VMRunningCondition)
	}
	s.PTM.Status.PowerState = "running"
	r.setCondition(s, infrav1.VMRunningCondition, true, infrav1.ReadyReason, "")
	r.event(s, "Normal", "VMStarted", "Started VM %d on node %s", vmid, node)
	return next()
}
