package cluster

import (
	"context"
	"slices"
	"strings"

	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
)

// NodesAttribute is the failure-domain attribute listing its Proxmox nodes.
const NodesAttribute = "nodes"

// reconcileFailureDomains mirrors spec.failureDomains into status for Cluster API, which
// spreads control-plane Machines across the domains that allow them.
func (r *Reconciler) reconcileFailureDomains(_ context.Context, s *Scope) (bool, ctrl.Result, error) {
	var fds []clusterv1.FailureDomain
	for _, fd := range s.Spec.FailureDomains {
		fds = append(fds, clusterv1.FailureDomain{
			Name:         fd.Name,
			ControlPlane: ptr.To(ptr.Deref(fd.ControlPlane, true)),
			Attributes:   map[string]string{NodesAttribute: strings.Join(slices.Sorted(slices.Values(fd.Nodes)), ",")},
		})
	}
	s.InfraCluster.Status.FailureDomains = fds
	return true, ctrl.Result{}, nil
}
