package machine

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// waitForBootstrapData holds the machine until the bootstrap provider has written its
// data Secret. The Machine watch requeues us when dataSecretName is set.
func (r *Reconciler) waitForBootstrapData(_ context.Context, s *Scope) (result, error) {
	if s.Machine.Spec.Bootstrap.DataSecretName != nil && *s.Machine.Spec.Bootstrap.DataSecretName != "" {
		r.setCondition(s, infrav1.BootstrapDataReadyCondition, true, infrav1.ReadyReason, "")
		return next()
	}
	s.PTM.Status.Step = infrav1.StepWaitingForBootstrapData
	r.setCondition(s, infrav1.BootstrapDataReadyCondition, false, infrav1.WaitingForBootstrapDataReason,
		"Waiting for the bootstrap provider to set Machine.spec.bootstrap.dataSecretName")
	return stop(ctrlResultNone)
}

// bootstrapData reads the machine config (key `value`) from the bootstrap data Secret.
// The bytes hold the cluster's PKI: they go onto the boot ISO and nowhere else.
func (r *Reconciler) bootstrapData(ctx context.Context, s *Scope) ([]byte, error) {
	name := *s.Machine.Spec.Bootstrap.DataSecretName
	secret := &corev1.Secret{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: s.Machine.Namespace, Name: name}, secret); err != nil {
		return nil, fmt.Errorf("reading bootstrap data Secret %s: %w", name, err)
	}
	value, ok := secret.Data["value"]
	if !ok || len(value) == 0 {
		return nil, fmt.Errorf("bootstrap data Secret %s has no key \"value\"", name)
	}
	return value, nil
}

// extraConfig reads the cluster's extra Talos documents (spec.extraConfig).
func (r *Reconciler) extraConfig(ctx context.Context, s *Scope) ([][]byte, error) {
	var docs [][]byte
	for _, src := range s.ClusterSpec.ExtraConfig {
		secret := &corev1.Secret{}
		if err := r.Client.Get(ctx, client.ObjectKey{Namespace: s.InfraCluster.Namespace, Name: src.Name}, secret); err != nil {
			return nil, fmt.Errorf("reading extraConfig Secret %s: %w", src.Name, err)
		}
		doc, ok := secret.Data[src.Key]
		if !ok {
			return nil, fmt.Errorf("extraConfig Secret %s has no key %q", src.Name, src.Key)
		}
		docs = append(docs, doc)
	}
	return docs, nil
}
