package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	"sigs.k8s.io/cluster-api/util/conditions"

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

// createVM creates the VM, or adopts the one an earlier pass created. The SMBIOS uuid
// (chosen at placement) and the VMID are persisted before the create request; the
// create's task id is recorded in status before the pass ends, and later passes follow
// the task instead of waiting for it (an import can take minutes). What is at the VMID
// decides everything else: this machine's VM is adopted, a create in progress is waited
// for, and only a complete VM that is provably someone else's makes the machine take
// another VMID. So an interrupted create never leads to a second VM.
func (r *Reconciler) createVM(ctx context.Context, s *Scope) (result, error) {
	if vmCreated(s) {
		// The providerID is recorded only once the VM exists, but the condition may say
		// otherwise: `clusterctl move` recreates the object without its status, and the
		// first pass on the new management cluster waits for the cluster (waitForCluster
		// sets VMProvisioned False) before it gets here.
		if !conditions.IsTrue(s.PTM, infrav1.VMProvisionedCondition) && s.PTM.Spec.VMID != nil {
			r.setCondition(s, infrav1.VMProvisionedCondition, true, infrav1.ReadyReason,
				fmt.Sprintf("VM %d on node %s", *s.PTM.Spec.VMID, s.PTM.Spec.Node))
		}
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
			recorded, err := r.recordedVMIDs(ctx)
			if err != nil {
				return result{}, err
			}
			rng.Recorded = recorded
			vmid, err := s.PVE.AllocateVMID(ctx, rng)
			if err != nil {
				reason, msg := cluster.ClassifyError(err)
				r.setCondition(s, infrav1.VMProvisionedCondition, false, reason, msg)
				return r.waitOn(s, infrav1.VMProvisionedCondition)
			}
			s.PTM.Spec.VMID = ptr.To(int32(vmid))
			r.fresh.Store(s.PTM.UID, vmid)
		}
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
			fmt.Sprintf("Creating VM %d on node %s", *s.PTM.Spec.VMID, s.PTM.Spec.Node))
		return r.persistNow()
	}
	node, vmid := s.PTM.Spec.Node, int(*s.PTM.Spec.VMID)

	// 2. A create this controller started on an earlier pass.
	created := false
	var followed string
	if t := s.PTM.Status.Task; t != nil {
		followed = t.UPID
	}
	switch out, _, err := r.followTask(ctx, s, taskCreate); out {
	case taskRunning:
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
			fmt.Sprintf("Creating VM %d on node %s (Proxmox task running %s)", vmid, node, taskRunningSince(s)))
		return stop(ctrl.Result{RequeueAfter: r.taskRequeue(s)})
	case taskFailed:
		// Proxmox removes the config of a failed create; the next pass looks again.
		reason, msg := cluster.ClassifyError(err)
		if reason == infrav1.ProxmoxAPIErrorReason {
			reason = infrav1.TaskFailedReason
		}
		r.setCondition(s, infrav1.VMProvisionedCondition, false, reason, fmt.Sprintf("Creating VM %d on node %s failed: %s", vmid, node, msg))
		r.warn(s, reason, "Creating VM %d on node %s failed: %s", vmid, node, msg)
		return r.waitOn(s, infrav1.VMProvisionedCondition)
	case taskSucceeded:
		// Only a create this process sent for this machine proves whose VM it made. A
		// task resumed from the node's task list (its record lost to a restart) may be
		// another machine's create at the same VMID, since every machine uses the same
		// API token: that VM is judged by its config below, like after any restart.
		if sent, ok := r.sentCreates.Load(s.PTM.UID); ok && sent.(string) == followed {
			created = true
		}
		r.sentCreates.Delete(s.PTM.UID)
	default:
		if err != nil {
			return r.vmError(s, err)
		}
	}

	// 3. What is at the VMID now. Two cases need no look: the create task this machine
	// recorded succeeded (the VM at node/VMID is the one it created; should it have
	// moved or gone since, the resize below fails and the next pass looks), and the VMID
	// was allocated by this process for this machine with no create sent yet (nothing of
	// ours can be there; another tool's VM there makes the create fail with "already
	// exists", which startCreate handles). After a restart neither is known, and the
	// look below is what keeps an interrupted create from making a second VM.
	loc := location{vmid: vmid}
	var found bool
	var err error
	if fresh, ok := r.fresh.Load(s.PTM.UID); ok && fresh.(int) == vmid && !created {
		return r.startCreate(ctx, s)
	}
	if created {
		found, loc.node, loc.verdict = true, node, vmOurs
	} else if found, err = r.configAt(ctx, s, node, &loc); err != nil {
		return r.vmError(s, err)
	}
	if !found && len(loc.offline) > 0 {
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.NodeOfflineReason,
			fmt.Sprintf("Proxmox node %s does not answer; waiting to create VM %d there", node, vmid))
		return r.waitOn(s, infrav1.VMProvisionedCondition)
	}
	if !found {
		if created {
			// The task succeeded but the VM is not where it was created: it moved
			// already, or was deleted. Look for it everywhere.
			if loc, err = r.locateVM(ctx, s); err != nil {
				return r.vmError(s, err)
			}
		} else {
			return r.startCreate(ctx, s)
		}
	}
	switch loc.verdict {
	case vmAbsent:
		return r.startCreate(ctx, s)
	case vmCreating:
		// A create is in progress at this VMID. If it is ours (its record was lost: the
		// controller stopped between the request and the status write), follow it.
		tasks, err := s.PVE.ListTasks(ctx, loc.node, proxmox.TaskFilter{Type: taskCreate, VMID: vmid, User: "me", Source: "active"})
		if err != nil {
			return r.vmError(s, err)
		}
		if len(tasks) > 0 {
			recordTask(s, tasks[0].UPID, taskCreate, loc.node, vmid)
			s.PTM.Status.Task.StartTime = metav1.NewTime(tasks[0].StartTime)
			r.event(s, corev1.EventTypeNormal, "VMCreateResumed", "Following the create of VM %d on node %s started earlier (task %s)", vmid, loc.node, tasks[0].UPID)
			r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
				fmt.Sprintf("Creating VM %d on node %s (Proxmox task started earlier)", vmid, loc.node))
			return stop(ctrl.Result{RequeueAfter: r.taskRequeue(s)})
		}
		// Someone else's create, or ours that ended a moment ago: it shows whose it is
		// once it ends.
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
			fmt.Sprintf("VM %d on node %s is being created by a task this controller did not start; waiting to see whose VM it is", vmid, loc.node))
		return r.waitOn(s, infrav1.VMProvisionedCondition)
	case vmForeign:
		// A complete VM that does not show this machine's identity: another tool took
		// the id. Leave it alone and take another VMID; nothing of ours exists at this
		// one, so nothing is duplicated or leaked.
		what := describeVM(loc.node, vmid, loc.cfg)
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
			fmt.Sprintf("VMID %d is taken by %s, which is not this machine's; allocating another", vmid, what))
		r.warn(s, "VMIDConflict", "VMID %d is taken by %s, which is not this machine's; allocating another", vmid, what)
		s.PTM.Spec.VMID = nil
		s.PTM.Status.Task = nil
		return r.persistNow()
	}

	// 4. Ours.
	if loc.node != node {
		s.PTM.Spec.Node = loc.node
		node = loc.node
	}
	if created {
		s.justCreated = true
		r.event(s, corev1.EventTypeNormal, "VMCreated", "Created VM %d on node %s", vmid, node)
	} else {
		r.event(s, corev1.EventTypeNormal, "VMAdopted", "Adopted VM %d on node %s, created earlier for this machine", vmid, node)
	}
	// Grow the imported disk to the requested size (grow-only, so repeating is safe).
	if err := s.PVE.ResizeDisk(ctx, node, vmid, "scsi0", fmt.Sprintf("%dG", s.Spec.BootDisk.SizeGiB)); err != nil {
		return r.vmError(s, err)
	}
	r.setCondition(s, infrav1.VMProvisionedCondition, true, infrav1.ReadyReason, fmt.Sprintf("VM %d on node %s", vmid, node))
	return next()
}

// recordedVMIDs are the VMIDs every ProxmoxTalosMachine has recorded. After a restart the
// VMID reservations of the process that recorded them are gone, and a VMID recorded but
// not yet created is free in Proxmox's eyes: without this, two machines could take the
// same VMID and one would have to give it up (vmForeign) after a wasted create. Machines
// of every Proxmox are counted: skipping an id another Proxmox uses costs nothing. The
// cached list is read without copies (at N machines, N allocations would copy N² objects).
func (r *Reconciler) recordedVMIDs(ctx context.Context) (map[int]bool, error) {
	var list infrav1.ProxmoxTalosMachineList
	if err := r.Client.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing ProxmoxTalosMachines for their VMIDs: %w", err)
	}
	ids := make(map[int]bool, len(list.Items))
	for i := range list.Items {
		if v := list.Items[i].Spec.VMID; v != nil {
			ids[int(*v)] = true
		}
	}
	return ids, nil
}

// taskCreate is the type of Proxmox's VM create task.
const taskCreate = "qmcreate"

// startCreate sends the create request and records its task.
func (r *Reconciler) startCreate(ctx context.Context, s *Scope) (result, error) {
	node, vmid := s.PTM.Spec.Node, int(*s.PTM.Spec.VMID)
	spec, err := r.vmSpec(s)
	if err != nil {
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InvalidConfigurationReason, err.Error())
		return stop(ctrlResultNone)
	}
	// Whatever the answer, a create may have reached Proxmox: from now on the next pass
	// looks at the VMID before sending another.
	r.fresh.Delete(s.PTM.UID)
	upid, err := s.PVE.StartCreateVM(ctx, spec)
	if errors.Is(err, proxmox.ErrNodeBusy) {
		// Nothing was sent: the node runs as many of this manager's creates as allowed.
		// Try again when one of them has likely ended. Nothing of ours is at the VMID
		// (every caller comes here with the VMID freshly allocated or just found empty,
		// as after a failed create) and nothing was sent since, so the next pass need not
		// look again: at N=1000 a machine waiting for a slot after a failed create read
		// the VM config on every pass (1.6 reads per VM).
		r.fresh.Store(s.PTM.UID, vmid)
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
			fmt.Sprintf("Waiting for one of the VM creates running on node %s to end (--proxmox-max-tasks-per-node)", node))
		return stop(ctrl.Result{RequeueAfter: max(s.PVE.TaskPollDelay(taskCreate), time.Second)})
	}
	if iso := s.PTM.Status.BootISO; err != nil && iso != "" && strings.Contains(err.Error(), "volume '"+iso+"' does not exist") {
		// The boot ISO uploaded on an earlier pass is gone (deleted by hand, storage
		// cleaned): the next pass uploads it again.
		s.PTM.Status.BootISO = ""
		r.setCondition(s, infrav1.BootISOReadyCondition, false, infrav1.InProgressReason, "The boot ISO "+iso+" is gone from Proxmox; uploading it again")
		r.warn(s, "BootISOMissing", "The boot ISO %s is gone from Proxmox; uploading it again", iso)
		return r.persistNow()
	}
	if errors.Is(err, proxmox.ErrAlreadyExists) {
		// The VMID exists on another node (or appeared meanwhile). Whose it is decides
		// on the next pass, which looks cluster-wide.
		loc, lerr := r.locateVM(ctx, s)
		if lerr != nil {
			return r.vmError(s, lerr)
		}
		switch loc.verdict {
		case vmOurs:
			s.PTM.Spec.Node = loc.node
			r.event(s, corev1.EventTypeNormal, "VMAdopted", "Adopted VM %d on node %s, created earlier for this machine", vmid, loc.node)
			return r.persistNow()
		case vmForeign:
			what := describeVM(loc.node, vmid, loc.cfg)
			r.warn(s, "VMIDConflict", "VMID %d is taken by %s, which is not this machine's; allocating another", vmid, what)
			r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
				fmt.Sprintf("VMID %d is taken by %s, which is not this machine's; allocating another", vmid, what))
			s.PTM.Spec.VMID = nil
			return r.persistNow()
		}
		// Being created, or gone again: look on the next pass.
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
			fmt.Sprintf("VMID %d is in use on another node (%s); checking whose VM it is", vmid, loc.verdict))
		return r.waitOn(s, infrav1.VMProvisionedCondition)
	}
	if err != nil {
		return r.vmError(s, err)
	}
	r.recordStarted(s, upid, taskCreate, node, vmid)
	r.sentCreates.Store(s.PTM.UID, upid)
	r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.InProgressReason,
		fmt.Sprintf("Creating VM %d on node %s (Proxmox task started)", vmid, node))
	r.event(s, corev1.EventTypeNormal, "VMCreating", "Creating VM %d on node %s (task %s)", vmid, node, upid)
	return stop(ctrl.Result{RequeueAfter: r.taskRequeue(s)})
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
