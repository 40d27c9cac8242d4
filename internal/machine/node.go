package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
)

// waitForNode finishes the machine in the workload cluster. Talos does not pass a
// providerID to the kubelet, so the Node registers without one and Cluster API could never
// link Machine and Node: this step sets Node.spec.providerID (allowed while it is empty).
// Once the Node is Ready the boot ISO, which holds the cluster's PKI, is removed.
func (r *Reconciler) waitForNode(ctx context.Context, s *Scope) (result, error) {
	if conditions.IsTrue(s.PTM, infrav1.NodeReadyCondition) && s.PTM.Status.BootISO == "" {
		s.PTM.Status.Step = infrav1.StepRunning
		return next()
	}
	s.PTM.Status.Step = infrav1.StepWaitingForNode
	if r.ClusterCache == nil {
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.WaitingForNodeReason, "No workload cluster access configured")
		return stop(ctrlResultNone)
	}
	wc, err := r.ClusterCache.GetClient(ctx, client.ObjectKeyFromObject(s.Cluster))
	if err != nil {
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.WaitingForNodeReason, "Waiting for the workload cluster's API server")
		return r.waitOn(s, infrav1.NodeReadyCondition)
	}

	node, err := findNode(ctx, wc, s)
	if err != nil {
		return result{}, fmt.Errorf("looking up the workload Node: %w", err)
	}
	if node == nil {
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.WaitingForNodeReason, "Waiting for Node "+s.Machine.Name+" to register")
		return r.waitOn(s, infrav1.NodeReadyCondition)
	}
	switch node.Spec.ProviderID {
	case s.PTM.Spec.ProviderID:
	case "":
		base := node.DeepCopy()
		node.Spec.ProviderID = s.PTM.Spec.ProviderID
		if err := wc.Patch(ctx, node, client.MergeFrom(base)); err != nil {
			return result{}, fmt.Errorf("setting providerID on Node %s: %w", node.Name, err)
		}
		r.event(s, "Normal", "ProviderIDSet", "Set providerID of Node %s", node.Name)
	default:
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.InvalidConfigurationReason,
			fmt.Sprintf("Node %s has providerID %s, not %s", node.Name, node.Spec.ProviderID, s.PTM.Spec.ProviderID))
		return stop(ctrlResultNone)
	}
	if !nodeReady(node) {
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.NotReadyReason, "Node "+node.Name+" is not Ready yet")
		return r.waitOn(s, infrav1.NodeReadyCondition)
	}
	r.setCondition(s, infrav1.NodeReadyCondition, true, infrav1.ReadyReason, "")

	if err := r.deleteBootISO(ctx, s); err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.BootISOReadyCondition, true, reason, "Deleting the boot ISO failed: "+msg)
		return r.waitOn(s, infrav1.BootISOReadyCondition)
	}
	s.PTM.Status.Step = infrav1.StepRunning
	return next()
}

// findNode finds the machine's Node by name (the Talos hostname is the Machine name),
// else by one of its InternalIPs.
func findNode(ctx context.Context, wc client.Client, s *Scope) (*corev1.Node, error) {
	node := &corev1.Node{}
	err := wc.Get(ctx, client.ObjectKey{Name: s.Machine.Name}, node)
	if err == nil {
		return node, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}
	var ips []string
	for _, a := range s.PTM.Status.Addresses {
		if a.Type == clusterv1.MachineInternalIP {
			ips = append(ips, a.Address)
		}
	}
	if len(ips) == 0 {
		return nil, nil
	}
	var nodes corev1.NodeList
	if err := wc.List(ctx, &nodes); err != nil {
		return nil, err
	}
	for i := range nodes.Items {
		for _, a := range nodes.Items[i].Status.Addresses {
			if a.Type == corev1.NodeInternalIP && slices.Contains(ips, a.Address) {
				return &nodes.Items[i], nil
			}
		}
	}
	return nil, nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func isNotFound(err error) bool {
	return errors.Is(err, errNotFound)
}
