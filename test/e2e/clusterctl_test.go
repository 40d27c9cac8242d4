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

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	clusterctlv1 "sigs.k8s.io/cluster-api/cmd/clusterctl/api/v1alpha3"
	"sigs.k8s.io/cluster-api/test/framework"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
)

// The user's path with clusterctl (docs/getting-started.md): `clusterctl init` of all four
// providers from local repositories, the 3+2 cluster, `clusterctl describe`, `clusterctl
// upgrade plan`, `clusterctl move` to a second management cluster whose managers then carry
// on (scale the workers, delete: nothing left in Proxmox), `clusterctl delete
// --infrastructure proxmox-talos`. Run alone with -ginkgo.label-filter=clusterctl.
var _ = Describe("clusterctl init, describe, upgrade plan, move and delete on the lab", Ordered, ContinueOnFailure, Label("clusterctl"), func() {
	var (
		l         *lab.Lab
		source    *lab.Management
		target    *lab.Management
		cluster   *clusterv1.Cluster
		artifacts string
		ctx       = context.Background()
		watch     = &secretWatch{}
	)
	const workersAfterScale = 3

	BeforeAll(func() {
		artifacts = os.Getenv("ARTIFACTS")
		if artifacts == "" {
			artifacts = filepath.Join(testenv.RepoRoot(), "_artifacts", "e2e-"+time.Now().Format("20060102-150405"))
		}
		artifacts = filepath.Join(artifacts, "clusterctl")
		GinkgoWriter.Printf("artifacts: %s\n", artifacts)
		startCtx, cancel := context.WithTimeout(ctx, 8*time.Minute)
		defer cancel()
		var err error
		start := time.Now()
		l, err = lab.Start(startCtx, lab.Options{
			ArtifactsDir: artifacts, NodeSim: lab.TalosNodeSim, SkipApply: true, ClusterctlInit: true,
			// Room for a third worker after the move.
			Variables: map[string]string{"WORKER_IP_RANGE": "127.10.2.1-127.10.2.3"},
			Logf:      func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
		})
		DeferCleanup(func() {
			if l == nil {
				return
			}
			l.Stop()
			Expect(l.Leftovers()).To(BeEmpty(), "lab processes or listeners still running after Stop")
			AddReportEntry("artifacts", artifacts)
		})
		Expect(err).NotTo(HaveOccurred())
		source = l.Mgmt
		AddReportEntry("clusterctl init", fmt.Sprintf("management cluster with clusterctl init ready in %s", time.Since(start).Round(time.Second)))
	})

	It("clusterctl init installed cert-manager's CRDs and the four providers from the local repositories", func() {
		expectProviders(ctx, source, l.Repo)
		// clusterctl labels what it installed as cert-manager; `upgrade plan` reads it back.
		crds := &unstructured.UnstructuredList{}
		crds.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinitionList"})
		Expect(source.Client.List(ctx, crds, client.MatchingLabels{clusterctlv1.ClusterctlCoreLabel: clusterctlv1.ClusterctlCoreLabelCertManagerValue})).To(Succeed())
		var names []string
		for _, c := range crds.Items {
			names = append(names, c.GetName())
			Expect(c.GetAnnotations()).To(HaveKeyWithValue(clusterctlv1.CertManagerVersionAnnotation, l.Repo.CertManager))
		}
		Expect(names).To(ContainElements("issuers.cert-manager.io", "certificates.cert-manager.io"))
	})

	It("the default flavor's 3+2 cluster turns Available", func() {
		Expect(source.EnsureNamespace(ctx, l.Namespace)).To(Succeed())
		for _, cm := range addonConfigMaps(l.ClusterName, l.Namespace) {
			Expect(source.Client.Create(ctx, cm)).To(Succeed(), "ConfigMap %s", cm.Name)
		}
		applyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		Expect(l.ApplyCluster(applyCtx)).To(Succeed())
		cluster = framework.DiscoveryAndWaitForCluster(ctx, framework.DiscoveryAndWaitForClusterInput{
			Getter: source.Client, Namespace: l.Namespace, Name: l.ClusterName,
		}, "3m", "2s")
		st := waitAvailable(ctx, l, 8*time.Minute)
		Expect(st.CPReady).To(Equal(l.ControlPlanes))
		Expect(st.WReady).To(Equal(l.Workers))
	})

	It("clusterctl describe cluster shows every object and our conditions", func() {
		out := describe(ctx, l, artifacts, "describe-before-move")
		for _, want := range []string{"Cluster " + l.Namespace + "/" + l.ClusterName, "ProxmoxTalosCluster " + l.Namespace + "/" + l.ClusterName,
			"TalosControlPlane " + l.Namespace + "/"} {
			Expect(out).To(ContainSubstring(want))
		}
		ptms := &unstructured.UnstructuredList{}
		ptms.SetAPIVersion("infrastructure.cluster.x-k8s.io/v1beta1")
		ptms.SetKind("ProxmoxTalosMachineList")
		Expect(source.Client.List(ctx, ptms, client.InNamespace(l.Namespace))).To(Succeed())
		Expect(ptms.Items).To(HaveLen(l.ControlPlanes + l.Workers))
		for _, m := range ptms.Items {
			Expect(out).To(ContainSubstring("ProxmoxTalosMachine "+l.Namespace+"/"+m.GetName()), "describe must show each machine's infrastructure")
		}
		// The conditions that say where each machine stands, by their names.
		for _, cond := range []string{"CredentialsReady", "ControlPlaneEndpointReady", "VMProvisioned", "NodeReady"} {
			Expect(out).To(ContainSubstring(cond))
		}
	})

	It("clusterctl upgrade plan lists every provider", func() {
		out, err := source.Clusterctl(ctx, "upgrade", "plan")
		GinkgoWriter.Println(out)
		Expect(err).NotTo(HaveOccurred())
		for _, p := range l.Repo.Providers {
			Expect(out).To(MatchRegexp(`(?m)^%s\s+\S+\s+%s\s+%s\s+Already up to date`, regexp.QuoteMeta(p.ManifestLabel()), p.Type, regexp.QuoteMeta(p.Version)),
				"upgrade plan must list %s %s as current", p.ManifestLabel(), p.Version)
		}
		// The CRDs-only cert-manager clusterctl installed from the lab's repository is the
		// version it wants: nothing to upgrade.
		Expect(out).To(ContainSubstring("Cert-Manager is already up to date"))
		Expect(out).To(ContainSubstring("You are already up to date!"))
		AddReportEntry("clusterctl upgrade plan", out)
	})

	It("clusterctl move moves the cluster to a second management cluster, whose managers carry on", func() {
		start := time.Now()
		var err error
		startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		target, err = l.StartManagement(startCtx, "target")
		Expect(err).NotTo(HaveOccurred())
		expectProviders(ctx, target, l.Repo)
		GinkgoWriter.Printf("second management cluster ready in %s\n", time.Since(start).Round(time.Second))

		before := l.PVE.Inventory()
		moveStart := time.Now()
		moveCtx, cancelMove := context.WithTimeout(ctx, 5*time.Minute)
		defer cancelMove()
		out, err := l.Move(moveCtx, target)
		GinkgoWriter.Println(out)
		Expect(err).NotTo(HaveOccurred())
		AddReportEntry("clusterctl move", fmt.Sprintf("moved in %s", time.Since(moveStart).Round(time.Second)))

		// Gone from the source, present and unpaused on the target.
		machines := &clusterv1.MachineList{}
		Expect(source.Client.List(ctx, machines, client.InNamespace(l.Namespace))).To(Succeed())
		Expect(machines.Items).To(BeEmpty(), "Machines left on the source management cluster")
		moved := &clusterv1.Cluster{}
		Expect(target.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: l.ClusterName}, moved)).To(Succeed())
		Expect(moved.Spec.Paused).To(Or(BeNil(), HaveValue(BeFalse())))
		Expect(target.Client.List(ctx, machines, client.InNamespace(l.Namespace))).To(Succeed())
		Expect(machines.Items).To(HaveLen(l.ControlPlanes + l.Workers))
		cluster = moved

		// The target's managers reconcile the moved cluster back to Available without
		// touching Proxmox' VMs: same VMs, none created, none destroyed.
		st := waitAvailable(ctx, l, 5*time.Minute)
		Expect(st.CPReady).To(Equal(l.ControlPlanes))
		Expect(st.WReady).To(Equal(l.Workers))
		after := l.PVE.Inventory()
		Expect(vmIdentities(after)).To(Equal(vmIdentities(before)), "the move must neither create nor destroy a VM")
		if changed := vmConfigChanges(before, after); len(changed) > 0 {
			// Reported, not failed here: which keys change after a move is the machines'
			// identity question (UIDs change with the move); deletion below proves nothing leaks.
			AddReportEntry("VM config changed by the move", strings.Join(changed, "\n"))
			GinkgoWriter.Printf("VM configuration changed after the move:\n  %s\n", strings.Join(changed, "\n  "))
		}
		describe(ctx, l, artifacts, "describe-after-move")
	})

	It("the workers scale on the second management cluster", func() {
		md := workerDeployment(ctx, l)
		patch := client.MergeFrom(md.DeepCopy())
		md.Spec.Replicas = ptrTo(int32(workersAfterScale))
		Expect(target.Client.Patch(ctx, md, patch)).To(Succeed())
		start := time.Now()
		Eventually(func(g Gomega) {
			st, err := l.Status(ctx)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(st.WAll).To(Equal(workersAfterScale), st.Describe())
			g.Expect(st.WReady).To(Equal(workersAfterScale), st.Describe())
			g.Expect(st.VMs).To(Equal(l.ControlPlanes+workersAfterScale), st.Describe())
			g.Expect(target.CheckManagersAlive()).To(Succeed())
		}, "6m", "3s").Should(Succeed())
		AddReportEntry("scale", fmt.Sprintf("workers 2 -> %d on the second management cluster in %s", workersAfterScale, time.Since(start).Round(time.Second)))
	})

	It("deletes the Cluster from the second management cluster and leaves Proxmox empty", func() {
		if target == nil {
			Skip("the move failed: the cluster is deleted by the source management cluster's cleanup")
		}
		if cluster == nil {
			cluster = &clusterv1.Cluster{}
			cluster.Namespace, cluster.Name = l.Namespace, l.ClusterName
		}
		proxy := framework.NewClusterProxy("target", target.Kubeconfig, lab.Scheme())
		DeferCleanup(func() { proxy.Dispose(ctx) })
		deleteAndCheckEmpty(ctx, l, proxy, cluster, artifacts, watch)
	})

	It("clusterctl delete --infrastructure proxmox-talos removes our components", func() {
		m := target
		if m == nil {
			m = source
		}
		// Deleting the Cluster leaves the templates the manifest created (as with every
		// provider); a user removes them with `kubectl delete -f` before --include-crd,
		// which clusterctl refuses while any object of our CRDs exists.
		for _, kind := range []string{"ProxmoxTalosMachineTemplateList", "ProxmoxTalosClusterTemplateList"} {
			list := &unstructured.UnstructuredList{}
			list.SetGroupVersionKind(schema.GroupVersionKind{Group: "infrastructure.cluster.x-k8s.io", Version: "v1beta1", Kind: kind})
			Expect(m.Client.List(ctx, list)).To(Succeed())
			for i := range list.Items {
				GinkgoWriter.Printf("deleting %s %s/%s left by the manifest\n", list.Items[i].GetKind(), list.Items[i].GetNamespace(), list.Items[i].GetName())
				Expect(client.IgnoreNotFound(m.Client.Delete(ctx, &list.Items[i]))).To(Succeed())
			}
		}
		out, err := m.Clusterctl(ctx, "delete", "--infrastructure", "proxmox-talos", "--include-crd")
		GinkgoWriter.Println(out)
		Expect(err).NotTo(HaveOccurred())
		const label = "infrastructure-proxmox-talos"
		for _, kind := range []schema.GroupVersionKind{
			{Group: "apps", Version: "v1", Kind: "DeploymentList"},
			{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfigurationList"},
			{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "ValidatingWebhookConfigurationList"},
			{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinitionList"},
			{Group: "", Version: "v1", Kind: "ServiceList"},
			{Group: "cert-manager.io", Version: "v1", Kind: "CertificateList"},
		} {
			Eventually(func(g Gomega) {
				list := &unstructured.UnstructuredList{}
				list.SetGroupVersionKind(kind)
				g.Expect(m.Client.List(ctx, list, client.MatchingLabels{clusterv1.ProviderNameLabel: label})).To(Succeed())
				var left []string
				for _, o := range list.Items {
					left = append(left, o.GetNamespace()+"/"+o.GetName())
				}
				g.Expect(left).To(BeEmpty(), "%s left after clusterctl delete", kind.Kind)
			}, "1m", "1s").Should(Succeed())
		}
		// The inventory no longer lists us; the other three stay.
		providers := inventory(ctx, m)
		Expect(providers).NotTo(HaveKey(label))
		Expect(providers).To(HaveLen(3))
	})

	It("leaves no secret (Proxmox token, bootstrap data, Talos PKI keys, Tailscale key) in any log, event or status", func() {
		if source == nil {
			Skip("the lab did not start")
		}
		clients := []client.Client{source.Client}
		if target != nil {
			clients = append(clients, target.Client)
		}
		watch.scanAll(ctx, artifacts, clients...)
	})
})

// expectProviders checks clusterctl's inventory on a management cluster: one entry per
// repository provider, at the repository's version.
func expectProviders(ctx context.Context, m *lab.Management, repo *lab.ClusterctlRepo) {
	GinkgoHelper()
	want := map[string]string{}
	for _, p := range repo.Providers {
		want[p.ManifestLabel()] = p.Version
	}
	Expect(inventory(ctx, m)).To(Equal(want))
}

// inventory maps clusterctl's Provider objects (manifest label) to their versions.
func inventory(ctx context.Context, m *lab.Management) map[string]string {
	GinkgoHelper()
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(clusterctlv1.GroupVersion.WithKind("ProviderList"))
	Expect(m.Client.List(ctx, list)).To(Succeed())
	out := map[string]string{}
	for _, p := range list.Items {
		name, _, _ := unstructured.NestedString(p.Object, "providerName")
		typ, _, _ := unstructured.NestedString(p.Object, "type")
		version, _, _ := unstructured.NestedString(p.Object, "version")
		out[clusterctlv1.ManifestLabel(name, clusterctlv1.ProviderType(typ))] = version
	}
	return out
}

// describe runs `clusterctl describe cluster` twice, as a user would read it (the default
// view) and with every object and condition, logs both and keeps them under artifacts; it
// returns the detailed view.
func describe(ctx context.Context, l *lab.Lab, artifacts, name string) string {
	GinkgoHelper()
	args := []string{"describe", "cluster", l.ClusterName, "--namespace", l.Namespace}
	short, err := l.Mgmt.Clusterctl(ctx, args...)
	Expect(err).NotTo(HaveOccurred())
	full, err := l.Mgmt.Clusterctl(ctx, append(args, "--show-conditions", "all", "--echo", "--grouping=false")...)
	Expect(err).NotTo(HaveOccurred())
	text := "$ clusterctl " + strings.Join(args, " ") + "\n" + short +
		"\n$ clusterctl " + strings.Join(args, " ") + " --show-conditions all --echo --grouping=false\n" + full
	GinkgoWriter.Println(text)
	Expect(os.WriteFile(filepath.Join(artifacts, name+".txt"), []byte(text), 0o600)).To(Succeed())
	AddReportEntry("clusterctl "+name, short)
	return full
}

// workerDeployment is the cluster's one MachineDeployment.
func workerDeployment(ctx context.Context, l *lab.Lab) *clusterv1.MachineDeployment {
	GinkgoHelper()
	mds := &clusterv1.MachineDeploymentList{}
	Expect(l.Mgmt.Client.List(ctx, mds, client.InNamespace(l.Namespace), client.MatchingLabels{clusterv1.ClusterNameLabel: l.ClusterName})).To(Succeed())
	Expect(mds.Items).To(HaveLen(1))
	return &mds.Items[0]
}

func ptrTo[T any](v T) *T { return &v }

// vmIdentities lists each VM as node/vmid/name.
func vmIdentities(inv pvesim.Inventory) []string {
	var out []string
	for _, vm := range inv.VMs {
		out = append(out, fmt.Sprintf("%s/%d/%s", vm.Node, vm.VMID, vm.Name))
	}
	sort.Strings(out)
	return out
}

// vmConfigChanges lists the configuration keys of each VM that differ between two inventories.
func vmConfigChanges(before, after pvesim.Inventory) []string {
	prev := map[int]map[string]string{}
	for _, vm := range before.VMs {
		prev[vm.VMID] = vm.Config
	}
	var out []string
	for _, vm := range after.VMs {
		old := prev[vm.VMID]
		for k, v := range vm.Config {
			if old[k] != v {
				out = append(out, fmt.Sprintf("VM %d %s: %q -> %q", vm.VMID, k, old[k], v))
			}
		}
		for k, v := range old {
			if _, ok := vm.Config[k]; !ok {
				out = append(out, fmt.Sprintf("VM %d %s: %q removed", vm.VMID, k, v))
			}
		}
	}
	sort.Strings(out)
	return out
}
