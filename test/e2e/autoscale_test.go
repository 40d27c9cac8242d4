//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/test/framework"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
)

// Scale to and from zero the way the cluster autoscaler's Cluster API provider does it,
// with the real CAPI core manager and this provider: the autoscaler reads the workers
// template's status.capacity (published here from the real MachineDeployment flow) and
// changes the replicas with a merge patch on the MachineDeployment's scale subresource
// (its SetSize). The autoscaler binary itself does not build from the module proxy
// (docs/autoscaling.md), so this spec issues those calls; test/autoscaler runs the
// autoscaler's own code on the same status.
var _ = Describe("Scaling workers to and from zero on the lab (the autoscaler's calls)", Ordered, ContinueOnFailure, Label("autoscale"), func() {
	var (
		l         *lab.Lab
		proxy     framework.ClusterProxy
		dyn       dynamic.Interface
		artifacts string
		watch     = &secretWatch{}
		ctx       = context.Background()
	)
	mdResource := clusterv1.GroupVersion.WithResource("machinedeployments")

	BeforeAll(func() {
		artifacts = os.Getenv("ARTIFACTS")
		if artifacts == "" {
			artifacts = filepath.Join(testenv.RepoRoot(), "_artifacts", "e2e-"+time.Now().Format("20060102-150405"))
		}
		artifacts = filepath.Join(artifacts, "autoscale")
		startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		start := time.Now()
		var err error
		// One control plane and one worker: the smallest cluster that shows a worker pool
		// going to zero and coming back.
		l, err = lab.Start(startCtx, lab.Options{
			ArtifactsDir: artifacts, NodeSim: lab.TalosNodeSim, ClusterName: "scale0",
			ControlPlanes: 1, Workers: 1,
			Logf: func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
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
		proxy = framework.NewClusterProxy("lab", l.Mgmt.Kubeconfig, lab.Scheme())
		DeferCleanup(func() { proxy.Dispose(ctx) })
		dyn, err = dynamic.NewForConfig(l.Mgmt.RESTConfig)
		Expect(err).NotTo(HaveOccurred())
		AddReportEntry("autoscale lab", fmt.Sprintf("lab started and cluster applied in %s", time.Since(start).Round(time.Second)))
	})

	It("the 1+1 cluster turns Available", func() {
		start := time.Now()
		waitCtx, cancel := context.WithTimeout(ctx, 8*time.Minute)
		defer cancel()
		st, err := l.WaitAvailable(waitCtx, func(line string) { GinkgoWriter.Println(line) })
		GinkgoWriter.Println(l.Summary(st))
		Expect(err).NotTo(HaveOccurred())
		AddReportEntry("autoscale", fmt.Sprintf("1+1 Available in %s", time.Since(start).Round(time.Second)))
	})

	It("the workers template publishes status.capacity and nodeInfo, read the way the autoscaler reads them", func() {
		md := workerDeployment(ctx, l)
		ref := md.Spec.Template.Spec.InfrastructureRef
		Expect(ref.Kind).To(Equal("ProxmoxTalosMachineTemplate"))
		Eventually(func(g Gomega) {
			u := &unstructured.Unstructured{}
			u.SetGroupVersionKind(infrav1.GroupVersion.WithKind(ref.Kind))
			g.Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: ref.Name}, u)).To(Succeed())
			capacity, found, err := unstructured.NestedStringMap(u.Object, "status", "capacity")
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(found).To(BeTrue(), "status.capacity")
			// The flavor's defaults: 1 socket x 2 cores, 4096 MiB, a 20 GiB boot disk.
			want := map[corev1.ResourceName]string{corev1.ResourceCPU: "2", corev1.ResourceMemory: "4Gi", corev1.ResourceEphemeralStorage: "19234Mi"}
			g.Expect(capacity).To(HaveLen(len(want)))
			for k, v := range want {
				q, err := resource.ParseQuantity(capacity[string(k)])
				g.Expect(err).NotTo(HaveOccurred(), "%s", k)
				g.Expect(q.Cmp(resource.MustParse(v))).To(Equal(0), "%s = %s, want %s", k, capacity[string(k)], v)
			}
			nodeInfo, _, err := unstructured.NestedStringMap(u.Object, "status", "nodeInfo")
			g.Expect(err).NotTo(HaveOccurred())
			// The architecture comes from the cluster: the template is linked to it by the
			// owner reference CAPI's MachineDeployment controller adds.
			g.Expect(nodeInfo).To(Equal(map[string]string{"architecture": "amd64", "operatingSystem": "linux"}))
		}, "1m", "2s").Should(Succeed())
	})

	It("annotated for the autoscaler (min 0, max 1), the workers scale to zero through the scale subresource and the VM goes", func() {
		md := workerDeployment(ctx, l)
		patch := client.MergeFrom(md.DeepCopy())
		if md.Annotations == nil {
			md.Annotations = map[string]string{}
		}
		md.Annotations[clusterv1.AutoscalerMinSizeAnnotation] = "0"
		md.Annotations[clusterv1.AutoscalerMaxSizeAnnotation] = "1"
		Expect(l.Mgmt.Client.Patch(ctx, md, patch)).To(Succeed(), "CAPI's webhooks accept the documented annotations")

		start := time.Now()
		scaleTo(ctx, dyn, mdResource, md, 0)
		Eventually(func(g Gomega) {
			st, err := l.Status(ctx)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(st.WAll).To(Equal(0), st.Describe())
			g.Expect(st.VMs).To(Equal(l.ControlPlanes), st.Describe())
		}, "5m", "3s").Should(Succeed())
		AddReportEntry("autoscale", fmt.Sprintf("workers 1 -> 0 (VM destroyed) in %s", time.Since(start).Round(time.Second)))
	})

	It("scales from zero to one through the scale subresource: the new machine gets its VM and its Node", func() {
		md := workerDeployment(ctx, l)
		start := time.Now()
		scaleTo(ctx, dyn, mdResource, md, 1)
		Eventually(func(g Gomega) {
			st, err := l.Status(ctx)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(st.WAll).To(Equal(1), st.Describe())
			g.Expect(st.WReady).To(Equal(1), st.Describe())
			g.Expect(st.VMs).To(Equal(l.ControlPlanes+1), st.Describe())
		}, "6m", "3s").Should(Succeed())

		kubeconfig, err := l.WriteWorkloadKubeconfig(ctx)
		Expect(err).NotTo(HaveOccurred())
		restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		Expect(err).NotTo(HaveOccurred())
		workload, err := client.New(restCfg, client.Options{})
		Expect(err).NotTo(HaveOccurred())
		Eventually(func(g Gomega) {
			machines := &clusterv1.MachineList{}
			g.Expect(l.Mgmt.Client.List(ctx, machines, client.InNamespace(l.Namespace),
				client.MatchingLabels{clusterv1.MachineDeploymentNameLabel: md.Name})).To(Succeed())
			g.Expect(machines.Items).To(HaveLen(1))
			m := machines.Items[0]
			g.Expect(m.Status.NodeRef.Name).NotTo(BeEmpty(), "Machine %s has no Node yet", m.Name)
			node := &corev1.Node{}
			g.Expect(workload.Get(ctx, client.ObjectKey{Name: m.Status.NodeRef.Name}, node)).To(Succeed())
			g.Expect(node.Spec.ProviderID).To(Equal(m.Spec.ProviderID), "the Node is the Machine's VM")
		}, "3m", "3s").Should(Succeed())
		AddReportEntry("autoscale", fmt.Sprintf("workers 0 -> 1 (VM and Node) in %s", time.Since(start).Round(time.Second)))
	})

	It("deletes the Cluster and leaves Proxmox empty", func() {
		cl := &clusterv1.Cluster{}
		cl.Namespace, cl.Name = l.Namespace, l.ClusterName
		deleteAndCheckEmpty(ctx, l, proxy, cl, artifacts, watch)
	})

	It("leaves no secret (Proxmox token, bootstrap data, Talos PKI keys, Tailscale key) in any log, event or status", func() {
		watch.scanAll(ctx, artifacts, l.Mgmt.Client)
	})
})

// scaleTo changes a MachineDeployment's replicas the way the cluster autoscaler's Cluster
// API provider does: a JSON merge patch of {"spec":{"replicas":n}} on its scale subresource.
func scaleTo(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, md *clusterv1.MachineDeployment, n int32) {
	GinkgoHelper()
	body := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, n))
	_, err := dyn.Resource(gvr).Namespace(md.Namespace).Patch(ctx, md.Name, types.MergePatchType, body, metav1.PatchOptions{}, "scale")
	Expect(err).NotTo(HaveOccurred(), "patch %s/%s/scale to %d", md.Namespace, md.Name, n)
}
