package cluster

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
)

// ReconcileDelete releases the cluster's resources once no ProxmoxTalosMachine of the
// cluster is left (they need the credentials to delete their VMs): the endpoint address,
// then the credentials Secret's finalizer, then the cluster's own finalizer.
func (r *Reconciler) ReconcileDelete(ctx context.Context, s *Scope) (ctrl.Result, error) {
	clusterName := s.InfraCluster.Labels[clusterv1.ClusterNameLabel]
	if s.Cluster != nil {
		clusterName = s.Cluster.Name
	}
	if clusterName != "" {
		var machines infrav1.ProxmoxTalosMachineList
		if err := r.Client.List(ctx, &machines, client.InNamespace(s.InfraCluster.Namespace),
			client.MatchingLabels{clusterv1.ClusterNameLabel: clusterName}); err != nil {
			return ctrl.Result{}, err
		}
		if n := len(machines.Items); n > 0 {
			r.setCondition(s, infrav1.ReadyCondition, false, infrav1.DeletingReason,
				fmt.Sprintf("Waiting for %d ProxmoxTalosMachine(s) to be deleted", n))
			return r.requeue(s, infrav1.ReadyCondition), nil
		}
	}

	released, err := ipam.Release(ctx, r.Client, s.InfraCluster)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !released {
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}, nil
	}

	if err := r.releaseCredentials(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if f, ok := r.Proxmox.(interface{ Forget(string) }); ok {
		f.Forget(string(s.InfraCluster.UID))
	}
	controllerutil.RemoveFinalizer(s.InfraCluster, infrav1.ClusterFinalizer)
	return ctrl.Result{}, nil
}

// releaseCredentials drops this cluster's owner reference from the Secret, and the
// finalizer unless another live cluster still uses the Secret.
func (r *Reconciler) releaseCredentials(ctx context.Context, s *Scope) error {
	secret, err := GetCredentials(ctx, r.Client, s.InfraCluster)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var others infrav1.ProxmoxTalosClusterList
	if err := r.Client.List(ctx, &others, client.InNamespace(s.InfraCluster.Namespace)); err != nil {
		return err
	}
	shared := false
	for _, o := range others.Items {
		if o.UID != s.InfraCluster.UID && o.DeletionTimestamp.IsZero() && o.Spec.Proxmox.CredentialsRef.Name == secret.Name {
			shared = true
		}
	}
	base := secret.DeepCopy()
	refs := secret.OwnerReferences[:0]
	for _, ref := range secret.OwnerReferences {
		if ref.UID != s.InfraCluster.UID {
			refs = append(refs, ref)
		}
	}
	secret.OwnerReferences = refs
	if !shared {
		controllerutil.RemoveFinalizer(secret, infrav1.CredentialsFinalizer)
	}
	if err := r.Client.Patch(ctx, secret, client.MergeFrom(base)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("releasing credentials Secret %s: %w", secret.Name, err)
	}
	return nil
}

func ownerRef(infra *infrav1.ProxmoxTalosCluster) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion: infrav1.GroupVersion.String(),
		Kind:       "ProxmoxTalosCluster",
		Name:       infra.Name,
		UID:        infra.UID,
	}
}
