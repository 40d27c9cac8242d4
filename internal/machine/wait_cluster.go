package machine

import (
	"context"

	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// waitForCluster holds the machine until Cluster API reports the cluster's infrastructure
// provisioned: credentials are checked and the control-plane endpoint, which the bootstrap
// provider bakes into every machine config, is known.
func (r *Reconciler) waitForCluster(_ context.Context, s *Scope) (result, error) {
	if ptr.Deref(s.Cluster.Status.Initialization.InfrastructureProvisioned, false) {
		return next()
	}
	s.PTM.Status.Step = infrav1.StepWaitingForCluster
	r.setCondition(s, infrav1.VMProvisionedCondition, false, infrav1.WaitingForClusterInfrastructureReason,
		"Waiting for the cluster's infrastructure to be provisioned")
	// The Cluster watch requeues the machine when this changes; no polling needed.
	return stop(ctrlResultNone)
}
