//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/test/framework"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "proxmox-talos e2e over the lab")
}

// ContinueOnFailure: the deletion spec runs even when the cluster never turned Available, so
// every run checks that Proxmox is left empty.
var _ = Describe("The default flavor on the lab", Ordered, ContinueOnFailure, func() {
	var (
		l         *lab.Lab
		proxy     framework.ClusterProxy
		cluster   *clusterv1.Cluster
		artifacts string
		ctx       = context.Background()
		watch     = &secretWatch{}
	)

	BeforeAll(func() {
		artifacts = os.Getenv("ARTIFACTS")
		if artifacts == "" {
			artifacts = filepath.Join(testenv.RepoRoot(), "_artifacts", "e2e-"+time.Now().Format("20060102-150405"))
		}
		GinkgoWriter.Printf("artifacts: %s\n", artifacts)
		startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		var err error
		// SkipApply: the flavors are dry-run first, then the add-on ConfigMaps and the default
		// flavor are applied by the specs below.
		l, err = lab.Start(startCtx, lab.Options{
			ArtifactsDir: artifacts, NodeSim: lab.TalosNodeSim, SkipApply: true,
			Logf: func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
		})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() {
			l.Stop()
			// Every process the lab started must be gone once it stops.
			Expect(l.Leftovers()).To(BeEmpty(), "lab processes or listeners still running after Stop")
			fmt.Fprintf(GinkgoWriter, "artifacts: %s\n", artifacts)
			AddReportEntry("artifacts", artifacts)
		})
		proxy = framework.NewClusterProxy("lab", l.Mgmt.Kubeconfig, lab.Scheme())
		DeferCleanup(func() { proxy.Dispose(ctx) })
	})

	It("accepts every generated flavor in a server-side dry-run apply", func() {
		start := time.Now()
		// The topology flavor's ClusterClass names a TalosControlPlaneTemplate: the optional
		// CRD goes in first, as docs/clusterclass.md tells users.
		Expect(l.Mgmt.InstallTalosControlPlaneTemplateCRD(ctx)).To(Succeed())
		const ns = "dryrun"
		Expect(l.Mgmt.EnsureNamespace(ctx, ns)).To(Succeed())
		for _, flavor := range []string{"", "metal", "talos-vip", "topology"} {
			objs := generateFlavor(ctx, l, flavor, "dry", ns, nil)
			for _, o := range objs {
				Expect(l.Mgmt.DryRunApply(ctx, o)).To(Succeed(), "flavor %q: %s %s", flavor, o.GetKind(), o.GetName())
			}
			AddReportEntry("dry-run", fmt.Sprintf("flavor %q: %d objects pass the server-side dry-run", flavor, len(objs)))
		}
		AddReportEntry("dry-run", "every flavor took "+time.Since(start).Round(time.Second).String())
	})

	It("applies the add-on ConfigMaps and the default flavor", func() {
		cilium, why := realCilium()
		if why != "" {
			GinkgoWriter.Println(why)
			AddReportEntry("real Cilium", why)
		}
		Expect(l.Mgmt.EnsureNamespace(ctx, l.Namespace)).To(Succeed())
		for _, cm := range addonConfigMaps(l.ClusterName, l.Namespace) {
			Expect(l.Mgmt.Client.Create(ctx, cm)).To(Succeed(), "ConfigMap %s", cm.Name)
		}
		if cilium != "" {
			stripped, dropped := withoutCertgen(cilium)
			Expect(dropped).To(Equal(2), "the shared Cilium render should hold the certgen Job and CronJob")
			Expect(l.Mgmt.Apply(ctx, upstreamCilium(l.ClusterName, l.Namespace, stripped))).To(Succeed())
		}
		applyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		Expect(l.ApplyCluster(applyCtx)).To(Succeed())
	})

	It("provisions the infrastructure, all five Machines get Nodes and the Cluster turns Available", func() {
		cluster = framework.DiscoveryAndWaitForCluster(ctx, framework.DiscoveryAndWaitForClusterInput{
			Getter: proxy.GetClient(), Namespace: l.Namespace, Name: l.ClusterName,
		}, "3m", "2s")
		Eventually(func(g Gomega) {
			machines := framework.GetMachinesByCluster(ctx, framework.GetMachinesByClusterInput{
				Lister: proxy.GetClient(), ClusterName: l.ClusterName, Namespace: l.Namespace,
			})
			g.Expect(machines).To(HaveLen(l.ControlPlanes + l.Workers))
		}, "3m", "2s").Should(Succeed())
		framework.WaitForClusterMachineNodeRefs(ctx, framework.WaitForClusterMachineNodeRefsInput{
			GetLister: proxy.GetClient(), Cluster: cluster,
		}, "8m", "5s")

		timeout := 8 * time.Minute
		if v := os.Getenv("E2E_AVAILABLE_TIMEOUT"); v != "" {
			d, err := time.ParseDuration(v)
			Expect(err).NotTo(HaveOccurred(), "E2E_AVAILABLE_TIMEOUT")
			timeout = d
		}
		waitCtx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		st, err := l.WaitAvailable(waitCtx, func(line string) { GinkgoWriter.Println(line) })
		GinkgoWriter.Println(l.Summary(st))
		Expect(err).NotTo(HaveOccurred())
		Expect(st.CPReady).To(Equal(l.ControlPlanes))
		Expect(st.WReady).To(Equal(l.Workers))
		Expect(l.PVE.Inventory().VMs).To(HaveLen(l.ControlPlanes + l.Workers))
	})

	It("applies the ClusterResourceSets' add-ons to the workload cluster", func() {
		var extra []string
		if cilium, _ := realCilium(); cilium != "" {
			extra = append(extra, "cilium-upstream")
		}
		checkAddonsApplied(ctx, l, len(extra) > 0, extra...)
	})

	// Talos applies cluster.inlineManifests to the workload API server when the first control
	// plane bootstraps (the node simulator does the same with the config it booted from).
	It("has the kube-vip DaemonSet from the inline manifests in the workload cluster", func() {
		wl := workloadClient(ctx, l)
		waitObjects(ctx, wl, []string{
			"v1 ServiceAccount kube-system/kube-vip",
			"rbac.authorization.k8s.io/v1 ClusterRole /system:kube-vip-role",
			"rbac.authorization.k8s.io/v1 ClusterRoleBinding /system:kube-vip-binding",
			"apps/v1 DaemonSet kube-system/kube-vip",
		}, "2m", "kube-vip objects from cluster.inlineManifests")
		ds := &unstructured.Unstructured{}
		ds.SetAPIVersion("apps/v1")
		ds.SetKind("DaemonSet")
		Expect(wl.Get(ctx, client.ObjectKey{Namespace: "kube-system", Name: "kube-vip"}, ds)).To(Succeed())
		containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
		Expect(containers).NotTo(BeEmpty())
		env := map[string]string{}
		for _, e := range containers[0].(map[string]any)["env"].([]any) {
			em := e.(map[string]any)
			v := fmt.Sprint(em["value"])
			if ref, ok, _ := unstructured.NestedString(em, "valueFrom", "fieldRef", "fieldPath"); ok {
				v = "fieldRef:" + ref
			}
			env[fmt.Sprint(em["name"])] = v
		}
		Expect(env).To(HaveKeyWithValue("address", lab.EndpointIP))
		Expect(env).To(HaveKeyWithValue("vip_nodename", "fieldRef:spec.nodeName"))
		AddReportEntry("kube-vip", "DaemonSet kube-system/kube-vip in the workload cluster, address "+env["address"])
	})

	// strategy Reconcile: a changed ConfigMap is re-applied over what is in the cluster. The
	// templates' own <cluster>-cilium set (stand-in content) and, when ../shared/addons has it,
	// the real Cilium render without the certgen Job (hubble.tls.auto.method helm).
	It("re-applies the Cilium ClusterResourceSet after its ConfigMap changes", func() {
		wl := workloadClient(ctx, l)
		changeAndWaitReapplied(ctx, l, wl, l.ClusterName+"-cilium", l.ClusterName+"-cilium")
		if cilium, _ := realCilium(); cilium != "" {
			changeAndWaitReapplied(ctx, l, wl, l.ClusterName+"-cilium-upstream", l.ClusterName+"-cilium-upstream")
		}
	})

	It("deletes the Cluster and leaves Proxmox empty", func() {
		if cluster == nil {
			cluster = &clusterv1.Cluster{}
			cluster.Namespace, cluster.Name = l.Namespace, l.ClusterName
		}
		deleteAndCheckEmpty(ctx, l, proxy, cluster, artifacts, watch)
	})

	// The ClusterClass route (docs/clusterclass.md) with the real CAPI topology controller and
	// CACPPT, after the default cluster is gone (both use the VIP 127.10.3.1).
	It("ClusterClass: a topology Cluster turns Available with 3 control planes and 2 workers", func() {
		createTopologyCluster(ctx, l)
		checkRenderedLoopback(ctx, l)
	})

	It("ClusterClass: the topology Cluster gets its add-ons from the flavor's ClusterResourceSets", func() {
		checkAddonsApplied(ctx, l, false)
	})

	It("ClusterClass: a spec.topology.version bump replaces every Machine", func() {
		bumpTopologyVersion(ctx, l, topologyTo, 12*time.Minute)
	})

	It("ClusterClass: deletes the topology Cluster and leaves Proxmox empty", func() {
		cl := &clusterv1.Cluster{}
		cl.Namespace, cl.Name = topologyNamespace, topologyName
		deleteAndCheckEmpty(ctx, l, proxy, cl, artifacts, watch)
	})

	It("leaves no secret (Proxmox token, bootstrap data, Talos PKI keys, Tailscale key) in any log, event or status", func() {
		watch.scanAll(ctx, artifacts, l.Mgmt.Client)
	})
})

// generateFlavor runs the real clusterctl on a flavor, checks that every address is a
// loopback one and returns the objects in namespace. The topology flavor's output from
// `--from <file>` is only the Cluster: clusterctl adds the class file from a provider
// repository only, so the class comes from templates/clusterclass-proxmox-talos.yaml (it
// has no variables) into the same namespace, as clusterctl would put it.
func generateFlavor(ctx context.Context, l *lab.Lab, flavor, name, ns string, overrides map[string]string) []*unstructured.Unstructured {
	GinkgoHelper()
	out, path, err := l.GenerateFlavor(ctx, flavor, name, ns, overrides)
	Expect(err).NotTo(HaveOccurred())
	objs, err := lab.DecodeYAML(out)
	Expect(err).NotTo(HaveOccurred())
	// What clusterctl generated is checked; the class file is not: it holds variable schemas
	// (defaults and descriptions with example addresses) and a placeholder Proxmox URL
	// (proxmox.invalid) that its patches replace with the Cluster's variables. The objects
	// topology renders from it are checked in the ClusterClass specs.
	Expect(lab.CheckLoopbackOnly(objs)).To(Succeed(), "generated %s", path)
	if flavor == "topology" && !hasKind(objs, "ClusterClass") {
		b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "templates", "clusterclass-proxmox-talos.yaml"))
		Expect(err).NotTo(HaveOccurred())
		class, err := lab.DecodeYAML(b)
		Expect(err).NotTo(HaveOccurred())
		// The class and its templates before the Cluster that names them.
		objs = append(class, objs...)
	}
	for _, o := range objs {
		o.SetNamespace(ns)
	}
	return objs
}

func hasKind(objs []*unstructured.Unstructured, kind string) bool {
	for _, o := range objs {
		if o.GetKind() == kind {
			return true
		}
	}
	return false
}

// deleteAndCheckEmpty deletes a Cluster and waits until pvesim holds nothing: no VM, no
// disk, no boot ISO, and no Talos image (the last cluster using an image storage takes the
// images with it).
func deleteAndCheckEmpty(ctx context.Context, l *lab.Lab, proxy framework.ClusterProxy, cluster *clusterv1.Cluster, artifacts string, watch *secretWatch) {
	GinkgoHelper()
	// The cluster's bootstrap and PKI Secrets and its objects' status go with it: read and
	// scan them first.
	watch.collect(ctx, proxy.GetClient())
	framework.DeleteCluster(ctx, framework.DeleteClusterInput{Deleter: proxy.GetClient(), Cluster: cluster})
	framework.WaitForClusterDeleted(ctx, framework.WaitForClusterDeletedInput{
		ClusterProxy: proxy, Cluster: cluster, ArtifactFolder: artifacts,
		ClusterctlConfigPath: filepath.Join(artifacts, "clusterctl.yaml"),
	}, "5m", "2s")
	Eventually(func(g Gomega) {
		inv := l.PVE.Inventory()
		g.Expect(inv.VMs).To(BeEmpty(), "VMs left in pvesim")
		g.Expect(inv.Volumes).To(BeEmpty(), "volumes left in pvesim")
	}, "1m", "2s").Should(Succeed())
}
