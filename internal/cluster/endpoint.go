package cluster

import (
	"context"
	"errors"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
)

// EndpointClaimName is the IPAddressClaim holding a cluster's pool-allocated endpoint.
func EndpointClaimName(infra *infrav1.ProxmoxTalosCluster) string {
	return infra.Name + "-control-plane-endpoint"
}

// reconcileEndpoint makes sure spec.controlPlaneEndpoint is known before the cluster is
// reported provisioned (the bootstrap provider writes it into every machine config then).
// It comes from the spec, from the Cluster (a user may set it there), or from the pool
// named in controlPlaneEndpointPool; it is write-once.
func (r *Reconciler) reconcileEndpoint(ctx context.Context, s *Scope) (bool, ctrl.Result, error) {
	ep := &s.InfraCluster.Spec.ControlPlaneEndpoint
	if ep.Host == "" && s.Cluster.Spec.ControlPlaneEndpoint.Host != "" {
		*ep = s.Cluster.Spec.ControlPlaneEndpoint
	}
	if ep.Host == "" && s.Spec.ControlPlaneEndpointPool != "" {
		pool, ok := ipam.FindPool(s.InfraCluster, s.Spec.ControlPlaneEndpointPool)
		if !ok {
			r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, false, infrav1.InvalidConfigurationReason,
				fmt.Sprintf("spec.controlPlaneEndpointPool names %q, which is not in spec.ipPools", s.Spec.ControlPlaneEndpointPool))
			return false, ctrl.Result{}, nil
		}
		owner := ipam.Owner{Object: s.InfraCluster, GVK: infrav1.GroupVersion.WithKind("ProxmoxTalosCluster"), Cluster: s.Cluster.Name}
		alloc, err := ipam.ClaimFromPool(ctx, r.Client, owner, s.InfraCluster.Name, pool, EndpointClaimName(s.InfraCluster))
		if errors.Is(err, ipam.ErrPoolExhausted) {
			r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, false, infrav1.PoolExhaustedReason, err.Error())
			return false, r.requeue(s, infrav1.ControlPlaneEndpointReadyCondition), nil
		}
		if err != nil {
			return false, ctrl.Result{}, err
		}
		ep.Host = alloc.Address.Addr().String()
		r.event(s, "Normal", "EndpointAllocated", "Control-plane endpoint %s allocated from pool %s", ep.Host, pool.Name)
	}
	if ep.Host == "" {
		r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, false, infrav1.InvalidConfigurationReason,
			"set spec.controlPlaneEndpoint.host or spec.controlPlaneEndpointPool")
		return false, ctrl.Result{}, nil
	}
	if ep.Port == 0 {
		ep.Port = infrav1.DefaultAPIServerPort
	}
	r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, true, infrav1.ReadyReason, "")
	return true, ctrl.Result{}, nil
}
