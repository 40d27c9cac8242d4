package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
)

// EndpointClaimName is the IPAddressClaim holding a cluster's pool-allocated endpoint.
func EndpointClaimName(infra *infrav1.ProxmoxTalosCluster) string {
	return infra.Name + "-control-plane-endpoint"
}

// OwnerID is the cluster's identity on the address claims it makes (ipam.OwnerUIDLabel): a
// digest of its namespace and name, which `clusterctl move` keeps, unlike the object's UID,
// so a moved cluster still finds (and on deletion releases) its VIP claim.
func OwnerID(infra *infrav1.ProxmoxTalosCluster) string {
	sum := sha256.Sum256([]byte("ProxmoxTalosCluster/" + infra.Namespace + "/" + infra.Name))
	return "cluster-" + hex.EncodeToString(sum[:16])
}

// reconcileEndpoint makes sure spec.controlPlaneEndpoint is known before the cluster is
// reported provisioned (the bootstrap provider writes it into every machine config then).
// It comes from the spec, from the Cluster (a user may set it there), from the cluster
// pool named in controlPlaneEndpointPool, or from the Cluster API IPAM pool referenced by
// controlPlaneEndpointIPAMPoolRef; it is write-once. A host inside one of spec.ipPools is
// then reserved in that pool, so no machine is ever given the VIP. Machines wait for the
// cluster to be provisioned, so the reservation always precedes their claims.
func (r *Reconciler) reconcileEndpoint(ctx context.Context, s *Scope) (bool, ctrl.Result, error) {
	ep := &s.InfraCluster.Spec.ControlPlaneEndpoint
	if ep.Host == "" && s.Cluster.Spec.ControlPlaneEndpoint.Host != "" {
		*ep = s.Cluster.Spec.ControlPlaneEndpoint
	}
	owner := ipam.Owner{Object: s.InfraCluster, GVK: infrav1.GroupVersion.WithKind("ProxmoxTalosCluster"), Cluster: s.Cluster.Name, ID: OwnerID(s.InfraCluster)}
	switch {
	case ep.Host != "":
	case s.Spec.ControlPlaneEndpointPool != "":
		pool, ok := ipam.FindPool(s.InfraCluster, s.Spec.ControlPlaneEndpointPool)
		if !ok {
			r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, false, infrav1.InvalidConfigurationReason,
				fmt.Sprintf("spec.controlPlaneEndpointPool names %q, which is not in spec.ipPools", s.Spec.ControlPlaneEndpointPool))
			return false, ctrl.Result{}, nil
		}
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
	case s.Spec.ControlPlaneEndpointIPAMPoolRef != nil:
		ref := *s.Spec.ControlPlaneEndpointIPAMPoolRef
		alloc, err := ipam.ClaimFromProvider(ctx, r.Client, owner, ref, EndpointClaimName(s.InfraCluster))
		if errors.Is(err, ipam.ErrWaiting) {
			r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, false, infrav1.WaitingForIPAMReason,
				fmt.Sprintf("Waiting for the IPAM provider to allocate an address from %s %s to IPAddressClaim %s", ref.Kind, ref.Name, EndpointClaimName(s.InfraCluster)))
			return false, r.requeue(s, infrav1.ControlPlaneEndpointReadyCondition), nil
		}
		if err != nil {
			return false, ctrl.Result{}, err
		}
		ep.Host = alloc.Address.Addr().String()
		r.event(s, "Normal", "EndpointAllocated", "Control-plane endpoint %s allocated from %s %s", ep.Host, ref.Kind, ref.Name)
	}
	if ep.Host == "" {
		r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, false, infrav1.InvalidConfigurationReason,
			"set spec.controlPlaneEndpoint.host, spec.controlPlaneEndpointPool or spec.controlPlaneEndpointIPAMPoolRef")
		return false, ctrl.Result{}, nil
	}
	if ep.Port == 0 {
		ep.Port = infrav1.DefaultAPIServerPort
	}
	if addr, err := netip.ParseAddr(ep.Host); err == nil {
		if pool, ok := ipam.PoolContaining(s.Spec.IPPools, addr); ok {
			err := ipam.Reserve(ctx, r.Client, owner, s.InfraCluster.Name, pool, addr, EndpointClaimName(s.InfraCluster))
			if errors.Is(err, ipam.ErrAddressInUse) {
				msg := fmt.Sprintf("The control-plane endpoint %s lies in pool %s and cannot be reserved: %v. Delete the machine that holds it, or choose an endpoint outside the pool", addr, pool.Name, err)
				if c := s.InfraCluster.Status.Conditions; !hasMessage(c, infrav1.ControlPlaneEndpointReadyCondition, msg) {
					r.event(s, "Warning", infrav1.EndpointAddressInUseReason, "%s", msg)
				}
				r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, false, infrav1.EndpointAddressInUseReason, msg)
				return false, r.requeue(s, infrav1.ControlPlaneEndpointReadyCondition), nil
			}
			if err != nil {
				return false, ctrl.Result{}, err
			}
		}
	}
	r.setCondition(s, infrav1.ControlPlaneEndpointReadyCondition, true, infrav1.ReadyReason, "")
	return true, ctrl.Result{}, nil
}
