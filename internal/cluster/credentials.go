package cluster

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
)

// reconcileCredentials makes sure the credentials Secret exists and holds a token, and
// ties it to the cluster: a finalizer keeps it while VMs may still need deleting, and an
// owner reference makes `clusterctl move` carry it along.
func (r *Reconciler) reconcileCredentials(ctx context.Context, s *Scope) (bool, ctrl.Result, error) {
	secret, err := GetCredentials(ctx, r.Client, s.InfraCluster)
	if apierrors.IsNotFound(err) {
		r.setCondition(s, infrav1.CredentialsReadyCondition, false, infrav1.CredentialsSecretNotFoundReason,
			fmt.Sprintf("Secret %s not found in namespace %s", s.InfraCluster.Spec.Proxmox.CredentialsRef.Name, s.InfraCluster.Namespace))
		return false, r.requeue(s, infrav1.CredentialsReadyCondition), nil
	}
	if err != nil {
		return false, ctrl.Result{}, err
	}

	if err := r.adoptSecret(ctx, s, secret); err != nil {
		return false, ctrl.Result{}, err
	}

	pve, err := r.Proxmox.ClientFor(s.InfraCluster, secret)
	if err != nil {
		reason := infrav1.InvalidConfigurationReason
		switch {
		case errors.Is(err, clients.ErrCredentialsInvalid):
			reason = infrav1.CredentialsInvalidReason
		case errors.Is(err, clients.ErrCABundleInvalid):
			reason = infrav1.CABundleInvalidReason
		case errors.Is(err, clients.ErrInsecureURL):
			reason = infrav1.InsecureURLReason
		}
		// The errors name keys, fields and PEM block numbers only, never the token or
		// the bundle's content.
		if c := conditions.Get(s.InfraCluster, infrav1.CredentialsReadyCondition); c == nil || c.Message != err.Error() {
			r.event(s, corev1.EventTypeWarning, reason, "%s", err.Error())
		}
		r.setCondition(s, infrav1.CredentialsReadyCondition, false, reason, err.Error())
		return false, r.requeue(s, infrav1.CredentialsReadyCondition), nil
	}
	s.credentials = secret
	s.pve = pve
	r.setCondition(s, infrav1.CredentialsReadyCondition, true, infrav1.ReadyReason, "")
	return true, ctrl.Result{}, nil
}

// GetCredentials reads the cluster's credentials Secret.
func GetCredentials(ctx context.Context, c client.Reader, infra *infrav1.ProxmoxTalosCluster) (*corev1.Secret, error) {
	secret := &corev1.Secret{}
	key := client.ObjectKey{Namespace: infra.Namespace, Name: infra.Spec.Proxmox.CredentialsRef.Name}
	if err := c.Get(ctx, key, secret); err != nil {
		return nil, err
	}
	return secret, nil
}

func (r *Reconciler) adoptSecret(ctx context.Context, s *Scope, secret *corev1.Secret) error {
	owner := ownerRef(s.InfraCluster)
	hasOwner := false
	for _, ref := range secret.OwnerReferences {
		if ref.UID == owner.UID {
			hasOwner = true
		}
	}
	if hasOwner && controllerutil.ContainsFinalizer(secret, infrav1.CredentialsFinalizer) {
		return nil
	}
	base := secret.DeepCopy()
	controllerutil.AddFinalizer(secret, infrav1.CredentialsFinalizer)
	if !hasOwner {
		// Not a controller reference: several clusters may share one Secret.
		secret.OwnerReferences = append(secret.OwnerReferences, owner)
	}
	if err := r.Client.Patch(ctx, secret, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("adding finalizer and owner reference to credentials Secret %s: %w", secret.Name, err)
	}
	return nil
}
