package machine

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
)

// Node loss hand-over.
//
// A Machine whose VM sits on a Proxmox node that does not answer cannot finish its
// deletion: the VM cannot be destroyed, and forgetting it would leave a VM that starts
// again, with its address, when the node returns. Cluster API counts a Machine being
// deleted as a replica (cluster-api#3434), so the MachineSet does not replace it either:
// a lost Proxmox node would cost its workers until it returns.
//
// After the node has been offline for Timing.NodeLossHandoverAfter, the deletion is handed
// over to a successor ProxmoxTalosMachine: a copy of the machine's identity (VMID, node,
// SMBIOS uuid, recorded volumes, addresses) with no owner Machine, owned by the
// ProxmoxTalosCluster, created already being deleted. The machine's address claims move to
// the successor, so the address stays reserved (the old VM comes back with it) and the
// replacement gets another one. Then the machine's finalizer goes and Cluster API replaces
// it at once. The successor is an ordinary machine in deletion: it destroys the VM when
// the node answers, deletes the volumes, releases the addresses; the cluster's deletion
// waits for it like for any machine; the abandon annotation ends it on a node gone for
// good.

// successorSuffix names the successor after the machine it takes over from.
const successorSuffix = "-offline"

// SuccessorName is the name of the ProxmoxTalosMachine that takes over machine's deletion.
func SuccessorName(machine string) string { return machine + successorSuffix }

// identityName is the machine name the VM's ownership tag carries: the original machine's
// for a successor, the machine's own otherwise.
func identityName(ptm *infrav1.ProxmoxTalosMachine) string {
	if from := ptm.Annotations[infrav1.HandedOverFromAnnotation]; from != "" {
		return from
	}
	return ptm.Name
}

// handoverDue reports whether the deletion of s, blocked by the offline nodes, is to be
// handed over now. Only a machine whose owner Machine waits for it hands over (a
// successor never does), and only once the nodes have been offline for the configured
// time as seen by this process (a restart starts the wait again: later, never earlier).
// pending is true when the hand-over will come if the nodes stay offline (the condition
// says when).
func (r *Reconciler) handoverDue(s *Scope, offline []string) (due, pending bool) {
	after := r.Timing.NodeLossHandoverAfter
	if after <= 0 || s.Machine == nil || s.PTM.Spec.SMBIOSUUID == "" || s.PTM.Annotations[infrav1.HandedOverFromAnnotation] != "" ||
		s.InfraCluster == nil || s.InfraCluster.UID == "" {
		return false, false
	}
	first, seen := r.offlineSince.LoadOrStore(s.PTM.UID, time.Now())
	if time.Since(first.(time.Time)) >= after {
		return true, false
	}
	msg := fmt.Sprintf("VM %d is not on any node that answers; Proxmox node(s) %s do not answer and may hold it. The deletion is handed over to %s if they stay offline for %s, so that the machine can be replaced",
		*s.PTM.Spec.VMID, strings.Join(offline, ", "), SuccessorName(s.PTM.Name), after)
	r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.NodeOfflineReason, msg)
	if !seen {
		r.warn(s, infrav1.NodeOfflineReason, "%s", msg)
	}
	return false, true
}

// successor returns the machine's successor if one exists (an earlier pass handed over and
// did not finish).
func (r *Reconciler) successor(ctx context.Context, s *Scope) (*infrav1.ProxmoxTalosMachine, error) {
	if s.Machine == nil || s.PTM.Spec.SMBIOSUUID == "" || s.PTM.Annotations[infrav1.HandedOverFromAnnotation] != "" {
		return nil, nil
	}
	succ := &infrav1.ProxmoxTalosMachine{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: s.PTM.Namespace, Name: SuccessorName(s.PTM.Name)}, succ)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !isSuccessorOf(succ, s.PTM) {
		return nil, nil
	}
	return succ, nil
}

func isSuccessorOf(succ, ptm *infrav1.ProxmoxTalosMachine) bool {
	return succ.Annotations[infrav1.HandedOverFromAnnotation] == ptm.Name && succ.Spec.SMBIOSUUID != "" &&
		strings.EqualFold(succ.Spec.SMBIOSUUID, ptm.Spec.SMBIOSUUID)
}

// handOver creates (or finds) the successor, moves the address claims to it, deletes it
// (it finishes the deletion) and releases this machine. Every step repeats safely: a pass
// interrupted anywhere is completed by the next one, which finds the successor.
func (r *Reconciler) handOver(ctx context.Context, s *Scope, offline []string) (ctrl.Result, error) {
	succ, err := r.ensureSuccessor(ctx, s)
	if err != nil {
		r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.NodeOfflineReason,
			fmt.Sprintf("Handing the VM over to %s failed: %v", SuccessorName(s.PTM.Name), err))
		out, _ := r.waitOn(s, infrav1.VMProvisionedCondition)
		return out.res, nil
	}
	if err := r.moveAddressClaims(ctx, s, succ); err != nil {
		return ctrl.Result{}, err
	}
	if succ.DeletionTimestamp.IsZero() {
		if err := r.Client.Delete(ctx, succ); client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, fmt.Errorf("deleting successor %s: %w", succ.Name, err)
		}
	}

	what := fmt.Sprintf("VM %d on node %s", *s.PTM.Spec.VMID, s.PTM.Spec.Node)
	if len(s.PTM.Spec.OwnedVolumes) > 0 {
		what += fmt.Sprintf(", %d volume(s)", len(s.PTM.Spec.OwnedVolumes))
	}
	if n := len(s.PTM.Spec.IPAddresses); n > 0 {
		var addrs []string
		for _, a := range s.PTM.Spec.IPAddresses {
			addrs = append(addrs, a.Address)
		}
		what += " and address(es) " + strings.Join(addrs, ", ")
	}
	why := "its Proxmox node does not answer"
	if len(offline) > 0 {
		why = fmt.Sprintf("Proxmox node(s) %s did not answer for %s", strings.Join(offline, ", "), r.Timing.NodeLossHandoverAfter)
	}
	msg := fmt.Sprintf("%s handed over to ProxmoxTalosMachine %s because %s; it deletes them once the node answers (the address stays reserved until then)", what, succ.Name, why)
	r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.VMHandedOverReason, msg)
	r.warn(s, infrav1.VMHandedOverReason, "%s", msg)
	s.PTM.Status.Task = nil
	r.forget(s)
	controllerutil.RemoveFinalizer(s.PTM, infrav1.MachineFinalizer)
	return ctrl.Result{}, nil
}

// ensureSuccessor creates the successor, or returns the one an earlier pass created.
func (r *Reconciler) ensureSuccessor(ctx context.Context, s *Scope) (*infrav1.ProxmoxTalosMachine, error) {
	labels := maps.Clone(s.PTM.Labels) // cluster name, watch filter: the same shard reconciles it
	succ := &infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   s.PTM.Namespace,
			Name:        SuccessorName(s.PTM.Name),
			Labels:      labels,
			Annotations: map[string]string{infrav1.HandedOverFromAnnotation: s.PTM.Name},
			Finalizers:  []string{infrav1.MachineFinalizer},
			// Owned by the ProxmoxTalosCluster: `clusterctl move` takes it along, and the
			// cluster's deletion waits for it like for every machine of the cluster.
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: infrav1.GroupVersion.String(), Kind: "ProxmoxTalosCluster",
				Name: s.InfraCluster.Name, UID: s.InfraCluster.UID,
			}},
		},
		Spec: *s.PTM.Spec.DeepCopy(),
	}
	err := r.Client.Create(ctx, succ)
	if err == nil {
		r.event(s, corev1.EventTypeNormal, "SuccessorCreated", "Created ProxmoxTalosMachine %s to finish deleting VM %d", succ.Name, *s.PTM.Spec.VMID)
		return succ, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating ProxmoxTalosMachine %s: %w", succ.Name, err)
	}
	existing := &infrav1.ProxmoxTalosMachine{}
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(succ), existing); err != nil {
		return nil, fmt.Errorf("reading ProxmoxTalosMachine %s: %w", succ.Name, err)
	}
	if !isSuccessorOf(existing, s.PTM) {
		return nil, fmt.Errorf("ProxmoxTalosMachine %s exists and is not this machine's successor; rename it, or annotate this machine with %s=true to abandon the VM",
			succ.Name, infrav1.AbandonVMAnnotation)
	}
	return existing, nil
}

// moveAddressClaims makes the successor the owner of every IPAddressClaim and IPAddress
// this machine owns, so that they outlive the machine (garbage collection follows owner
// references) and keep the address away from other machines until the VM is destroyed.
// Both carry the identity label the successor releases them by.
func (r *Reconciler) moveAddressClaims(ctx context.Context, s *Scope, succ *infrav1.ProxmoxTalosMachine) error {
	ref := metav1.OwnerReference{APIVersion: infrav1.GroupVersion.String(), Kind: "ProxmoxTalosMachine", Name: succ.Name, UID: succ.UID}
	var objs []client.Object
	for _, id := range []string{s.PTM.Spec.SMBIOSUUID, string(s.PTM.UID)} {
		sel := client.MatchingLabels{ipam.OwnerUIDLabel: id}
		var claims ipamv1.IPAddressClaimList
		if err := r.Client.List(ctx, &claims, client.InNamespace(s.PTM.Namespace), sel); err != nil {
			return err
		}
		for i := range claims.Items {
			objs = append(objs, &claims.Items[i])
		}
		var addrs ipamv1.IPAddressList
		if err := r.Client.List(ctx, &addrs, client.InNamespace(s.PTM.Namespace), sel); err != nil {
			return err
		}
		for i := range addrs.Items {
			objs = append(objs, &addrs.Items[i])
		}
	}
	for _, o := range objs {
		base := o.DeepCopyObject().(client.Object)
		refs := o.GetOwnerReferences()
		changed := false
		for i := range refs {
			if refs[i].UID == s.PTM.UID {
				refs[i].Name, refs[i].UID, refs[i].Kind, refs[i].APIVersion = ref.Name, ref.UID, ref.Kind, ref.APIVersion
				changed = true
			}
		}
		if !changed {
			continue
		}
		o.SetOwnerReferences(refs)
		if err := r.Client.Patch(ctx, o, client.MergeFrom(base)); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("handing %T %s over to %s: %w", o, o.GetName(), succ.Name, err)
		}
	}
	return nil
}
