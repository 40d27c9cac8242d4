//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
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

// certgenKind matches the top-level kind of the chart's Hubble certgen Job and CronJob.
var certgenKind = regexp.MustCompile(`(?m)^kind: (Job|CronJob)\s*$`)

// withoutCertgen drops the Job and CronJob from a Cilium render made with
// hubble.tls.auto.method=cronJob (the shared manifest): what a render with the method
// addons/cilium/values.yaml sets (helm) does not contain. Every other object stays as upstream
// rendered it.
func withoutCertgen(manifest string) (string, int) {
	docs := strings.Split(manifest, "\n---\n")
	kept, dropped := docs[:0], 0
	for _, d := range docs {
		if certgenKind.MatchString(d) && strings.Contains(d, "hubble-generate-certs") {
			dropped++
			continue
		}
		kept = append(kept, d)
	}
	return strings.Join(kept, "\n---\n"), dropped
}

// upstreamCilium is a test-only ConfigMap <cluster>-cilium-upstream holding the real Cilium
// manifest (without the certgen Job and CronJob, see withoutCertgen) and a ClusterResourceSet
// like the templates' <cluster>-cilium (same label, strategy Reconcile). Its binding must record
// the resource as applied, at first and after every change of the ConfigMap.
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

// workloadClient is an admin client of the lab cluster's workload API server, from the
// <cluster>-kubeconfig Secret CACPPT wrote.
func workloadClient(ctx context.Context, l *lab.Lab) client.Client {
	GinkgoHelper()
	kubeconfig, err := l.WriteWorkloadKubeconfig(ctx)
	Expect(err).NotTo(HaveOccurred())
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	Expect(err).NotTo(HaveOccurred())
	wl, err := client.New(cfg, client.Options{})
	Expect(err).NotTo(HaveOccurred())
	return wl
}

// waitObjects waits until every "apiVersion Kind namespace/name" of want exists in wl.
func waitObjects(ctx context.Context, wl client.Client, want []string, timeout string, what string) {
	GinkgoHelper()
	sort.Strings(want)
	Eventually(func(g Gomega) {
		var missing []string
		for _, w := range want {
			var apiVersion, kind, key string
			_, err := fmt.Sscan(w, &apiVersion, &kind, &key)
			g.Expect(err).NotTo(HaveOccurred())
			ns, name, _ := strings.Cut(key, "/")
			u := &unstructured.Unstructured{}
			u.SetAPIVersion(apiVersion)
			u.SetKind(kind)
			if err := wl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
				missing = append(missing, w+": "+err.Error())
			}
		}
		g.Expect(missing).To(BeEmpty(), what)
	}, timeout, "3s").Should(Succeed())
}

// bindingEntry is one resource of a ClusterResourceSetBinding, as CAPI records it.
type bindingEntry struct {
	crs, kind, name, hash string
	applied               bool
	lastApplied           time.Time
}

// bindingEntries lists every resource entry of the namespace's ClusterResourceSetBindings.
func bindingEntries(ctx context.Context, g Gomega, l *lab.Lab, namespace string) []bindingEntry {
	bindings := &unstructured.UnstructuredList{}
	bindings.SetAPIVersion("addons.cluster.x-k8s.io/v1beta2")
	bindings.SetKind("ClusterResourceSetBindingList")
	g.Expect(l.Mgmt.Client.List(ctx, bindings, client.InNamespace(namespace))).To(Succeed())
	var out []bindingEntry
	for _, b := range bindings.Items {
		list, _, _ := unstructured.NestedSlice(b.Object, "spec", "bindings")
		for _, x := range list {
			xm, _ := x.(map[string]any)
			res, _ := xm["resources"].([]any)
			for _, r := range res {
				rm, _ := r.(map[string]any)
				e := bindingEntry{crs: fmt.Sprint(xm["clusterResourceSetName"]), kind: fmt.Sprint(rm["kind"]),
					name: fmt.Sprint(rm["name"]), hash: fmt.Sprint(rm["hash"]), applied: rm["applied"] == true}
				if ts, ok := rm["lastAppliedTime"].(string); ok {
					e.lastApplied, _ = time.Parse(time.RFC3339, ts)
				}
				out = append(out, e)
			}
		}
	}
	return out
}

// checkAddonsApplied waits until the stand-in add-ons (and the real Cilium when applied) are
// in the lab cluster's workload API server and every templates' ClusterResourceSet (plus
// extra ones) recorded its resources as applied.
func checkAddonsApplied(ctx context.Context, l *lab.Lab, withCilium bool, extraCRS ...string) {
	GinkgoHelper()
	start := time.Now()
	wl := workloadClient(ctx, l)
	want := []string{}
	for _, a := range standInAddons() {
		want = append(want, a.want...)
	}
	if withCilium {
		want = append(want, "apps/v1 DaemonSet kube-system/cilium", "apps/v1 Deployment kube-system/cilium-operator")
	}
	waitObjects(ctx, wl, want, "3m", "objects the ClusterResourceSets should have created in the workload cluster")
	AddReportEntry("add-ons", fmt.Sprintf("cluster %s: all %d add-on objects in the workload cluster after %s", l.ClusterName, len(want), time.Since(start).Round(time.Second)))

	sets := append([]string{"cilium", "metallb", "metallb-pools", "flux", "flux-sync"}, extraCRS...)
	Eventually(func(g Gomega) {
		applied := map[string]bool{}
		for _, e := range bindingEntries(ctx, g, l, l.Namespace) {
			if e.applied {
				applied[e.crs] = true
			}
		}
		for _, crs := range sets {
			g.Expect(applied).To(HaveKey(l.ClusterName+"-"+crs), "ClusterResourceSet %s-%s applied nothing", l.ClusterName, crs)
		}
	}, "1m", "2s").Should(Succeed())
	for _, e := range bindingEntries(ctx, Default, l, l.Namespace) {
		line := fmt.Sprintf("binding: %s %s/%s applied=%v", e.crs, e.kind, e.name, e.applied)
		GinkgoWriter.Println(line)
		AddReportEntry("ClusterResourceSet", line)
	}
}

// changeAndWaitReapplied adds a key with one more ConfigMap to the add-on ConfigMap cmName and
// waits until its Reconcile ClusterResourceSet crsName re-applied it: the new object is in the
// workload cluster and the binding records the new content's hash as applied.
func changeAndWaitReapplied(ctx context.Context, l *lab.Lab, wl client.Client, crsName, cmName string) {
	GinkgoHelper()
	start := time.Now()
	var before bindingEntry
	Eventually(func(g Gomega) {
		for _, e := range bindingEntries(ctx, g, l, l.Namespace) {
			if e.crs == crsName && e.kind == "ConfigMap" && e.name == cmName {
				before = e
			}
		}
		g.Expect(before.applied).To(BeTrue(), "%s: ConfigMap %s not applied before the change", crsName, cmName)
	}, "1m", "2s").Should(Succeed())

	marker := fmt.Sprintf("reapply-%d", time.Now().Unix())
	cm := &corev1.ConfigMap{}
	Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: cmName}, cm)).To(Succeed())
	patch := client.MergeFrom(cm.DeepCopy())
	cm.Data["z-"+marker+".yaml"] = fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\n  namespace: kube-system\ndata:\n  from: %s\n", marker, cmName)
	Expect(l.Mgmt.Client.Patch(ctx, cm, patch)).To(Succeed())

	waitObjects(ctx, wl, []string{"v1 ConfigMap kube-system/" + marker}, "2m", "object added to "+cmName+" after the change")
	Eventually(func(g Gomega) {
		var now bindingEntry
		for _, e := range bindingEntries(ctx, g, l, l.Namespace) {
			if e.crs == crsName && e.kind == "ConfigMap" && e.name == cmName {
				now = e
			}
		}
		g.Expect(now.hash).NotTo(Equal(before.hash), "binding still holds the old hash")
		g.Expect(now.applied).To(BeTrue(), "binding records the changed ConfigMap as not applied (re-apply failed)")
	}, "2m", "2s").Should(Succeed())
	AddReportEntry("re-apply", fmt.Sprintf("%s re-applied ConfigMap %s after a change in %s", crsName, cmName, time.Since(start).Round(time.Second)))
}
