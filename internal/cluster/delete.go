package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/ipam"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
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

	// Claims carry OwnerID; the UID is still released for claims made before it existed.
	released, err := ipam.ReleaseIDs(ctx, r.Client, s.InfraCluster.Namespace, OwnerID(s.InfraCluster), string(s.InfraCluster.UID))
	if err != nil {
		return ctrl.Result{}, err
	}
	if !released {
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}, nil
	}

	if done, res, err := r.deleteImages(ctx, s); !done || err != nil {
		return res, err
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

// deleteImages removes the Talos disk images this provider placed in the cluster's image
// storage, so that deleting the last cluster leaves nothing behind in Proxmox. Images are
// shared by every cluster with the same Talos settings, so they stay while another live
// ProxmoxTalosCluster uses the same Proxmox API and image storage; a cluster created later
// downloads them again. Only files named the way this provider names images are touched.
// Missing credentials (the Secret was deleted first) skip the cleanup rather than block
// the deletion forever.
func (r *Reconciler) deleteImages(ctx context.Context, s *Scope) (bool, ctrl.Result, error) {
	shared, err := r.imageStorageShared(ctx, s)
	if err != nil || shared {
		return err == nil, ctrl.Result{}, err
	}
	secret, err := GetCredentials(ctx, r.Client, s.InfraCluster)
	if apierrors.IsNotFound(err) {
		return true, ctrl.Result{}, nil
	}
	if err != nil {
		return false, ctrl.Result{}, err
	}
	pve, err := r.Proxmox.ClientFor(s.InfraCluster, secret)
	if err != nil {
		return true, ctrl.Result{}, nil // invalid credentials cannot delete anything either
	}
	if err := deleteProviderImages(ctx, pve, s.Spec.ImageStorage); err != nil {
		reason, msg := ClassifyError(err)
		r.setCondition(s, infrav1.ReadyCondition, false, reason, "Deleting Talos images: "+msg)
		return false, r.requeue(s, infrav1.ReadyCondition), nil
	}
	return true, ctrl.Result{}, nil
}

// imageStorageShared reports whether another live ProxmoxTalosCluster keeps its images in
// the same storage of the same Proxmox installation.
func (r *Reconciler) imageStorageShared(ctx context.Context, s *Scope) (bool, error) {
	var all infrav1.ProxmoxTalosClusterList
	if err := r.Client.List(ctx, &all); err != nil {
		return false, err
	}
	for i := range all.Items {
		other := &all.Items[i]
		if other.UID == s.InfraCluster.UID || !other.DeletionTimestamp.IsZero() {
			continue
		}
		spec := *other.Spec.DeepCopy()
		spec.Default()
		if strings.TrimRight(spec.Proxmox.URL, "/") == strings.TrimRight(s.Spec.Proxmox.URL, "/") && spec.ImageStorage == s.Spec.ImageStorage {
			return true, nil
		}
	}
	return false, nil
}

// deleteProviderImages deletes, on every node that sees the storage, the import volumes
// whose names parse as this provider's image names. Shared storage lists the same volume
// on every node; deleting it again is a no-op (not found counts as done).
func deleteProviderImages(ctx context.Context, pve proxmox.Client, storage string) error {
	nodes, err := pve.Nodes(ctx)
	if err != nil {
		return err
	}
	deleted := map[string]bool{}
	for _, node := range nodes {
		if !node.Online {
			continue
		}
		vols, err := pve.StorageContent(ctx, node.Name, storage, "import")
		if errors.Is(err, proxmox.ErrNotFound) {
			continue // this node does not have the storage
		}
		if err != nil {
			return err
		}
		for _, v := range vols {
			name := v.VolID[strings.Index(v.VolID, "/")+1:]
			if _, err := imagefactory.ParseStorageName(name); err != nil || deleted[v.VolID+"@"+node.Name] {
				continue
			}
			if err := pve.DeleteVolume(ctx, node.Name, v.VolID); err != nil && !errors.Is(err, proxmox.ErrNotFound) {
				return err
			}
			deleted[v.VolID+"@"+node.Name] = true
		}
	}
	return nil
}
