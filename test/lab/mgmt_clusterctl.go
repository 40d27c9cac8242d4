package lab

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	clusterctlv1 "sigs.k8s.io/cluster-api/cmd/clusterctl/api/v1alpha3"
)

// ClusterctlInitArgs is the command a user runs, provider names only: versions come from the
// repositories the config points at.
var ClusterctlInitArgs = []string{"init",
	"--core", clusterctlCore,
	"--bootstrap", clusterctlTalos,
	"--control-plane", clusterctlTalos,
	"--infrastructure", clusterctlProxmoxTalos,
}

// Clusterctl runs the real clusterctl against this management cluster (--kubeconfig added).
func (m *Management) Clusterctl(ctx context.Context, args ...string) (string, error) {
	if m.Repo == nil {
		return "", fmt.Errorf("management cluster %s was installed by hand, not by clusterctl", m.artifacts)
	}
	return m.Repo.Run(ctx, m.ClusterctlLog, append(args, "--kubeconfig", m.Kubeconfig)...)
}

// clusterctlInit installs cert-manager's CRDs and the four providers with `clusterctl init`,
// then wires what clusterctl installed to the manager processes.
func (m *Management) clusterctlInit(ctx context.Context, specs []*managerSpec) error {
	start := time.Now()
	out, err := m.Clusterctl(ctx, ClusterctlInitArgs...)
	if err != nil {
		return err
	}
	m.logf("clusterctl %s (%s):\n  %s", strings.Join(ClusterctlInitArgs, " "), time.Since(start).Round(100*time.Millisecond),
		strings.ReplaceAll(strings.TrimSpace(out), "\n", "\n  "))
	for _, s := range specs {
		if err := m.wireProvider(ctx, s); err != nil {
			return fmt.Errorf("wiring %s installed by clusterctl to its process: %w", s.label, err)
		}
	}
	return nil
}

var (
	crdListGVK        = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinitionList"}
	deploymentListGVK = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DeploymentList"}
	webhookListGVKs   = []schema.GroupVersionKind{
		{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfigurationList"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "ValidatingWebhookConfigurationList"},
	}
)

// providerObjects lists what clusterctl installed for a provider: it labels every object
// with clusterctl.cluster.x-k8s.io and cluster.x-k8s.io/provider=<manifest label>, and
// `clusterctl delete` finds them by the same labels.
func (m *Management) providerObjects(ctx context.Context, gvk schema.GroupVersionKind, label string) ([]unstructured.Unstructured, error) {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(gvk)
	err := m.Client.List(ctx, list, client.MatchingLabels{clusterv1.ProviderNameLabel: label}, client.HasLabels{clusterctlv1.ClusterctlLabel})
	return list.Items, err
}

// wireProvider points a provider's conversion and admission webhooks at its manager process
// (what cert-manager's CA injector and the webhook Service would do in a real cluster) and
// scales its Deployment to zero: it would never run here, the process stands in for it.
func (m *Management) wireProvider(ctx context.Context, s *managerSpec) error {
	crds, err := m.providerObjects(ctx, crdListGVK, s.label)
	if err != nil {
		return err
	}
	if len(crds) == 0 {
		return fmt.Errorf("clusterctl installed no CRDs labelled %s=%s", clusterv1.ProviderNameLabel, s.label)
	}
	names := make([]string, 0, len(crds))
	for i := range crds {
		o := &crds[i]
		names = append(names, o.GetName())
		if strategy, _, _ := unstructured.NestedString(o.Object, "spec", "conversion", "strategy"); strategy != "Webhook" {
			continue
		}
		if err := unstructured.SetNestedField(o.Object, m.clientConfig(s, "/convert"), "spec", "conversion", "webhook", "clientConfig"); err != nil {
			return err
		}
		if err := m.Client.Update(ctx, o); err != nil {
			return fmt.Errorf("CRD %s: %w", o.GetName(), err)
		}
	}
	if err := m.waitEstablished(ctx, names); err != nil {
		return err
	}

	hooks := 0
	for _, gvk := range webhookListGVKs {
		items, err := m.providerObjects(ctx, gvk, s.label)
		if err != nil {
			return err
		}
		for i := range items {
			o := &items[i]
			if err := m.pointWebhooksAt(o, s); err != nil {
				return err
			}
			if err := m.Client.Update(ctx, o); err != nil {
				return fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
			}
			hooks++
		}
	}

	deployments, err := m.providerObjects(ctx, deploymentListGVK, s.label)
	if err != nil {
		return err
	}
	for i := range deployments {
		o := &deployments[i]
		patch := client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"replicas":0}}`))
		if err := m.Client.Patch(ctx, o, patch); err != nil {
			return fmt.Errorf("scaling Deployment %s/%s to zero: %w", o.GetNamespace(), o.GetName(), err)
		}
	}
	m.logf("%s: %d CRDs, %d webhook configurations pointed at 127.0.0.1:%d, %d Deployments scaled to 0 (the manager runs as a process)",
		s.label, len(crds), hooks, s.webhookPort, len(deployments))
	return nil
}
