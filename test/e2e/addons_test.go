//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// Stand-in add-ons: small manifests in the place of Cilium, MetalLB and Flux, so the lab proves
// that the templates' ClusterResourceSets deliver what their ConfigMaps hold without running
// any pod. Each ConfigMap has several keys whose sorted order matters (namespace, then CRD,
// then objects in that namespace; CAPI applies a ConfigMap's keys in sorted order, and Go map
// order is random, so a passing run shows the sorting). The MetalLB and Flux stand-ins carry
// the CRDs of the kinds the <cluster>-metallb-pools and <cluster>-flux-sync ConfigMaps apply,
// without the real MetalLB's admission webhooks, which would refuse every later apply in a
// lab where no webhook pod ever runs.

// standInCRD is a CRD that keeps any spec (the stand-ins only need the kind to exist).
func standInCRD(group, kind, plural string, versions ...string) string {
	s := fmt.Sprintf(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: %[3]s.%[1]s
spec:
  group: %[1]s
  names:
    kind: %[2]s
    plural: %[3]s
  scope: Namespaced
  versions:
`, group, kind, plural)
	for i, v := range versions {
		s += fmt.Sprintf(`  - name: %s
    served: true
    storage: %v
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
`, v, i == 0)
	}
	return s
}

func standInWorkload(ns, name string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[2]s
  namespace: %[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: %[2]s}
  template:
    metadata:
      labels: {app: %[2]s}
    spec:
      containers:
      - name: %[2]s
        image: registry.k8s.io/pause:3.10
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: %[2]s-config
  namespace: %[1]s
data:
  stand-in: "true"
`, ns, name)
}

func namespaceDoc(ns string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n", ns)
}

// standInAddon is one ConfigMap's worth of add-on and what must appear in the workload cluster.
type standInAddon struct {
	data map[string]string
	// want lists "apiVersion Kind namespace/name" of objects the CRS must create.
	want []string
}

func standInAddons() map[string]standInAddon {
	return map[string]standInAddon{
		"cilium": {
			data: map[string]string{
				"a-namespace.yaml": namespaceDoc("lab-cni"),
				"b-crd.yaml":       standInCRD("standin.lab.proxmox-talos.dev", "NetworkThing", "networkthings", "v1"),
				"c-workload.yaml":  standInWorkload("lab-cni", "cni-agent"),
			},
			want: []string{
				"apiextensions.k8s.io/v1 CustomResourceDefinition /networkthings.standin.lab.proxmox-talos.dev",
				"apps/v1 Deployment lab-cni/cni-agent",
				"v1 ConfigMap lab-cni/cni-agent-config",
			},
		},
		"metallb": {
			data: map[string]string{
				"a-namespace.yaml": namespaceDoc("metallb-system"),
				"b-crds.yaml": standInCRD("metallb.io", "IPAddressPool", "ipaddresspools", "v1beta1") + "---\n" +
					standInCRD("metallb.io", "L2Advertisement", "l2advertisements", "v1beta1"),
				"c-workload.yaml": standInWorkload("metallb-system", "controller"),
			},
			want: []string{
				"apps/v1 Deployment metallb-system/controller",
				// From the templates' own <cluster>-metallb-pools ConfigMap.
				"metallb.io/v1beta1 IPAddressPool metallb-system/ingress-pool",
				"metallb.io/v1beta1 IPAddressPool metallb-system/dns-pool",
				"metallb.io/v1beta1 IPAddressPool metallb-system/services-pool",
				"metallb.io/v1beta1 L2Advertisement metallb-system/default",
			},
		},
		"flux": {
			data: map[string]string{
				"a-namespace.yaml": namespaceDoc("flux-system"),
				"b-crds.yaml": standInCRD("source.toolkit.fluxcd.io", "GitRepository", "gitrepositories", "v1") + "---\n" +
					standInCRD("kustomize.toolkit.fluxcd.io", "Kustomization", "kustomizations", "v1"),
				"c-workload.yaml": standInWorkload("flux-system", "source-controller"),
			},
			want: []string{
				"apps/v1 Deployment flux-system/source-controller",
				// From the templates' own <cluster>-flux-sync ConfigMap.
				"source.toolkit.fluxcd.io/v1 GitRepository flux-system/flux-system",
				"kustomize.toolkit.fluxcd.io/v1 Kustomization flux-system/flux-system",
			},
		},
	}
}

// realCilium is the unmodified upstream Cilium manifest from ../shared/addons (never copied
// into the repository), or "" with the reason it is absent.
func realCilium() (manifest, why string) {
	path := filepath.Join(testenv.RepoRoot(), "..", "shared", "addons", "cilium-1.19.6-talos.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Sprintf("real Cilium manifest not used: %v", err)
	}
	return string(b), ""
}

// addonConfigMaps builds <cluster>-cilium, <cluster>-metallb and <cluster>-flux.
func addonConfigMaps(cluster, namespace string) []*corev1.ConfigMap {
	var out []*corev1.ConfigMap
	for name, a := range standInAddons() {
		out = append(out, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: cluster + "-" + name, Namespace: namespace},
			Data:       a.data,
		})
	}
	return out
}

// upstreamCilium is a test-only ConfigMap <cluster>-cilium-upstream holding the real Cilium
// manifest and a ClusterResourceSet like the templates' <cluster>-cilium (same label, strategy
// Reconcile). It is kept apart from the templates' set because its binding never records
// "applied" in the lab (see docs/templates.md, "Cilium's one-shot Job"), while the objects
// do arrive; the stand-in keeps the templates' own set strictly checked.
func upstreamCilium(cluster, namespace, manifest string) []*unstructured.Unstructured {
	name := cluster + "-cilium-upstream"
	cm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": name, "namespace": namespace},
		"data":     map[string]any{"cilium.yaml": manifest},
	}}
	crs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "addons.cluster.x-k8s.io/v1beta2", "kind": "ClusterResourceSet",
		"metadata": map[string]any{"name": name, "namespace": namespace},
		"spec": map[string]any{
			"strategy":        "Reconcile",
			"clusterSelector": map[string]any{"matchLabels": map[string]any{"cni": cluster + "-cilium"}},
			"resources":       []any{map[string]any{"kind": "ConfigMap", "name": name}},
		},
	}}
	return []*unstructured.Unstructured{cm, crs}
}
