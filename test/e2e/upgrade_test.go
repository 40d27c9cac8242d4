//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/test/framework"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
)

// The upgrade path of the default flavor in the lab: Kubernetes one patch up (Talos 1.13
// supports 1.31–1.36), then Talos one minor up to its latest patch (1.14 supports
// Kubernetes 1.32–1.37, so v1.35.1 stays valid). factorysim serves both Talos versions and
// talossim boots each image as that Talos release.
const (
	upgradeK8sFrom   = "v1.35.0"
	upgradeK8sTo     = "v1.35.1"
	upgradeTalosFrom = "v1.13.9" // the templates' default TALOS_VERSION
	upgradeTalosTo   = "v1.14.1"
)

// One lab and one default-flavor cluster with full address pools (3 control-plane and 2
// worker addresses for 3 + 2 machines): every rollout must replace machines one at a time
// (maxSurge 0), there is no spare address for a surge machine.
var _ = Describe("Upgrade the default flavor", Ordered, ContinueOnFailure, func() {
	var (
		l         *lab.Lab
		proxy     framework.ClusterProxy
		artifacts string
		watch     = &secretWatch{}
		ctx       = context.Background()
	)

	BeforeAll(func() {
		artifacts = os.Getenv("ARTIFACTS")
		if artifacts == "" {
			artifacts = filepath.Join(testenv.RepoRoot(), "_artifacts", "e2e-"+time.Now().Format("20060102-150405"))
		}
		artifacts = filepath.Join(artifacts, "upgrade")
		start := time.Now()
		startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		var err error
		l, err = lab.Start(startCtx, lab.Options{
			ArtifactsDir: artifacts, NodeSim: lab.TalosNodeSim, KubernetesVersion: upgradeK8sFrom,
			Logf: func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
		})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() {
			l.Stop()
			Expect(l.Leftovers()).To(BeEmpty(), "lab processes or listeners still running after Stop")
			AddReportEntry("artifacts", artifacts)
		})
		proxy = framework.NewClusterProxy("lab-upgrade", l.Mgmt.Kubeconfig, lab.Scheme())
		DeferCleanup(func() { proxy.Dispose(ctx) })
		AddReportEntry("duration", "lab start and apply: "+time.Since(start).Round(time.Second).String())
	})

	It("creates the default-flavor cluster on Talos "+upgradeTalosFrom+" and Kubernetes "+upgradeK8sFrom, func() {
		start := time.Now()
		st := waitAvailable(ctx, l, 8*time.Minute)
		Expect(st.CPReady).To(Equal(l.ControlPlanes))
		Expect(st.WReady).To(Equal(l.Workers))
		Expect(talosImageVersionsInPVE(l)).To(Equal([]string{upgradeTalosFrom}), "one shared image")
		expectNodeVersions(ctx, l, upgradeK8sFrom, upgradeTalosFrom)
		AddReportEntry("duration", "create: "+time.Since(start).Round(time.Second).String())
	})

	It("upgrades Kubernetes: TalosControlPlane and MachineDeployment versions, one machine at a time", func() {
		start := time.Now()
		before := currentMachineNames(ctx, l)
		mon := startSurgeMonitor(ctx, l)

		tcp := talosControlPlaneOf(ctx, l)
		base := tcp.DeepCopy()
		Expect(unstructured.SetNestedField(tcp.Object, upgradeK8sTo, "spec", "version")).To(Succeed())
		Expect(l.Mgmt.Client.Patch(ctx, tcp, client.MergeFrom(base))).To(Succeed())
		md := workerDeployment(ctx, l)
		mdBase := md.DeepCopy()
		md.Spec.Template.Spec.Version = upgradeK8sTo
		Expect(l.Mgmt.Client.Patch(ctx, md, client.MergeFrom(mdBase))).To(Succeed())
		GinkgoWriter.Printf("Kubernetes %s -> %s\n", upgradeK8sFrom, upgradeK8sTo)

		waitEveryMachineReplaced(ctx, l, before, func(g Gomega, m clusterv1.Machine) {
			g.Expect(m.Spec.Version).To(Equal(upgradeK8sTo), "Machine %s", m.Name)
		}, 15*time.Minute)
		mon.stopAndCheck(l)
		expectNodeVersions(ctx, l, upgradeK8sTo, upgradeTalosFrom)
		AddReportEntry("duration", "Kubernetes upgrade: "+time.Since(start).Round(time.Second).String())
	})

	It("upgrades Talos: new machine templates roll every machine onto the new image; the old image is deleted", func() {
		start := time.Now()
		before := currentMachineNames(ctx, l)
		mon := startSurgeMonitor(ctx, l)
		suffix := "-talos-" + strings.ReplaceAll(strings.TrimPrefix(upgradeTalosTo, "v"), ".", "-")

		// Templates are immutable: copies under new names, with the new Talos version.
		cpTemplate := copyMachineTemplateWithTalos(ctx, l, l.ClusterName+"-control-plane", l.ClusterName+"-control-plane"+suffix, upgradeTalosTo)
		wTemplate := copyMachineTemplateWithTalos(ctx, l, l.ClusterName+"-workers", l.ClusterName+"-workers"+suffix, upgradeTalosTo)
		wConfig := copyTalosConfigTemplateWithVersion(ctx, l, l.ClusterName+"-workers", l.ClusterName+"-workers"+suffix, upgradeTalosTo)

		tcp := talosControlPlaneOf(ctx, l)
		base := tcp.DeepCopy()
		Expect(unstructured.SetNestedField(tcp.Object, cpTemplate, "spec", "infrastructureTemplate", "name")).To(Succeed())
		Expect(unstructured.SetNestedField(tcp.Object, upgradeTalosTo, "spec", "controlPlaneConfig", "controlplane", "talosVersion")).To(Succeed())
		Expect(l.Mgmt.Client.Patch(ctx, tcp, client.MergeFrom(base))).To(Succeed())
		md := workerDeployment(ctx, l)
		mdBase := md.DeepCopy()
		md.Spec.Template.Spec.InfrastructureRef.Name = wTemplate
		md.Spec.Template.Spec.Bootstrap.ConfigRef.Name = wConfig
		Expect(l.Mgmt.Client.Patch(ctx, md, client.MergeFrom(mdBase))).To(Succeed())
		GinkgoWriter.Printf("Talos %s -> %s\n", upgradeTalosFrom, upgradeTalosTo)

		waitEveryMachineReplaced(ctx, l, before, func(g Gomega, m clusterv1.Machine) {
			ptm := &infrav1.ProxmoxTalosMachine{}
			g.Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: m.Namespace, Name: m.Spec.InfrastructureRef.Name}, ptm)).To(Succeed())
			g.Expect(ptm.Spec.Talos).NotTo(BeNil(), "ProxmoxTalosMachine %s", ptm.Name)
			g.Expect(ptm.Spec.Talos.Version).To(Equal(upgradeTalosTo), "ProxmoxTalosMachine %s", ptm.Name)
		}, 15*time.Minute)
		mon.stopAndCheck(l)
		expectNodeVersions(ctx, l, upgradeK8sTo, upgradeTalosTo)

		// The old shared image goes once no machine uses it (after the collector's grace).
		gcStart := time.Now()
		Eventually(func(g Gomega) {
			g.Expect(talosImageVersionsInPVE(l)).To(Equal([]string{upgradeTalosTo}))
		}, "3m", "2s").Should(Succeed())
		AddReportEntry("image GC", fmt.Sprintf("the %s image was deleted %s after the rollout ended", upgradeTalosFrom, time.Since(gcStart).Round(time.Second)))
		AddReportEntry("duration", "Talos upgrade: "+time.Since(start).Round(time.Second).String())
	})

	It("deletes the upgraded cluster and leaves Proxmox empty", func() {
		start := time.Now()
		cl := &clusterv1.Cluster{}
		cl.Namespace, cl.Name = l.Namespace, l.ClusterName
		deleteAndCheckEmpty(ctx, l, proxy, cl, artifacts, watch)
		AddReportEntry("duration", "delete: "+time.Since(start).Round(time.Second).String())
	})

	It("leaves no secret (Proxmox token, bootstrap data, Talos PKI keys, Tailscale key) in any log, event or status", func() {
		watch.scanAll(ctx, artifacts, l.Mgmt.Client)
	})
})

// talosImageVersionsInPVE lists the Talos versions of the provider's images in pvesim, sorted.
func talosImageVersionsInPVE(l *lab.Lab) []string {
	seen := map[string]bool{}
	for _, v := range l.PVE.Inventory().VolumesByContent("import") {
		if ref, err := imagefactory.ParseStorageName(v.VolID[strings.Index(v.VolID, "/")+1:]); err == nil {
			seen[ref.TalosVersion] = true
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

func talosControlPlaneOf(ctx context.Context, l *lab.Lab) *unstructured.Unstructured {
	GinkgoHelper()
	tcp := &unstructured.Unstructured{}
	tcp.SetAPIVersion("controlplane.cluster.x-k8s.io/v1alpha3")
	tcp.SetKind("TalosControlPlane")
	Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: l.ClusterName}, tcp)).To(Succeed())
	return tcp
}

// copyMachineTemplateWithTalos creates a ProxmoxTalosMachineTemplate named to with from's spec and
// the Talos version talos, and returns its name.
func copyMachineTemplateWithTalos(ctx context.Context, l *lab.Lab, from, to, talos string) string {
	GinkgoHelper()
	old := &infrav1.ProxmoxTalosMachineTemplate{}
	Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: from}, old)).To(Succeed())
	t := &infrav1.ProxmoxTalosMachineTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: to, Namespace: l.Namespace, Labels: old.Labels},
		Spec:       *old.Spec.DeepCopy(),
	}
	if t.Spec.Template.Spec.Talos == nil {
		t.Spec.Template.Spec.Talos = &infrav1.TalosImageSpec{}
	}
	t.Spec.Template.Spec.Talos.Version = talos
	Expect(l.Mgmt.Client.Create(ctx, t)).To(Succeed())
	return to
}

// copyTalosConfigTemplateWithVersion creates a TalosConfigTemplate named to with from's spec and the
// config generated for Talos version talos, and returns its name.
func copyTalosConfigTemplateWithVersion(ctx context.Context, l *lab.Lab, from, to, talos string) string {
	GinkgoHelper()
	old := &unstructured.Unstructured{}
	old.SetAPIVersion("bootstrap.cluster.x-k8s.io/v1alpha3")
	old.SetKind("TalosConfigTemplate")
	Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: from}, old)).To(Succeed())
	spec, _, _ := unstructured.NestedMap(old.Object, "spec")
	t := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	t.SetAPIVersion(old.GetAPIVersion())
	t.SetKind(old.GetKind())
	t.SetNamespace(l.Namespace)
	t.SetName(to)
	t.SetLabels(old.GetLabels())
	Expect(unstructured.SetNestedField(t.Object, talos, "spec", "template", "spec", "talosVersion")).To(Succeed())
	Expect(l.Mgmt.Client.Create(ctx, t)).To(Succeed())
	return to
}

// currentMachineNames lists the cluster's Machines.
func currentMachineNames(ctx context.Context, l *lab.Lab) map[string]bool {
	GinkgoHelper()
	out := map[string]bool{}
	Eventually(func(g Gomega) {
		for name := range machineVersions(ctx, g, l) {
			out[name] = true
		}
	}).Should(Succeed())
	Expect(out).To(HaveLen(l.ControlPlanes + l.Workers))
	return out
}

// waitEveryMachineReplaced waits until every Machine of before is gone, the pools are full again with
// Machines that pass check, and the Cluster is Available with every Machine ready.
func waitEveryMachineReplaced(ctx context.Context, l *lab.Lab, before map[string]bool, check func(Gomega, clusterv1.Machine), timeout time.Duration) {
	GinkgoHelper()
	start := time.Now()
	last := ""
	Eventually(func(g Gomega) {
		machines := &clusterv1.MachineList{}
		g.Expect(l.Mgmt.Client.List(ctx, machines, client.InNamespace(l.Namespace),
			client.MatchingLabels{clusterv1.ClusterNameLabel: l.ClusterName})).To(Succeed())
		var names []string
		for _, m := range machines.Items {
			names = append(names, m.Name+"="+string(m.Status.Phase))
		}
		sort.Strings(names)
		if line := strings.Join(names, " "); line != last {
			GinkgoWriter.Printf("%s machines: %s\n", time.Since(start).Round(time.Second), line)
			last = line
		}
		g.Expect(machines.Items).To(HaveLen(l.ControlPlanes + l.Workers))
		for _, m := range machines.Items {
			g.Expect(before).NotTo(HaveKey(m.Name), "old Machine still present")
			check(g, m)
		}
		// Every new Machine has its Node and is ready: the Cluster turns Available while a
		// worker is still missing, so Available alone does not end a rollout.
		st, err := l.Status(ctx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(st.CPReady).To(Equal(l.ControlPlanes), st.Describe())
		g.Expect(st.WReady).To(Equal(l.Workers), st.Describe())
	}, timeout, "3s").Should(Succeed())
	st := waitAvailable(ctx, l, 5*time.Minute)
	Expect(st.CPReady).To(Equal(l.ControlPlanes))
	Expect(st.WReady).To(Equal(l.Workers))
	GinkgoWriter.Printf("rollout done in %s\n", time.Since(start).Round(time.Second))
}

// expectNodeVersions checks that the workload cluster has exactly one Node per Machine, each
// reporting the kubelet version k8s and the Talos version talos of the image it booted.
func expectNodeVersions(ctx context.Context, l *lab.Lab, k8s, talos string) {
	GinkgoHelper()
	wl := workloadClient(ctx, l)
	Eventually(func(g Gomega) {
		nodes := &corev1.NodeList{}
		g.Expect(wl.List(ctx, nodes)).To(Succeed())
		g.Expect(nodes.Items).To(HaveLen(l.ControlPlanes + l.Workers))
		for _, n := range nodes.Items {
			g.Expect(n.Status.NodeInfo.KubeletVersion).To(Equal(k8s), "Node %s", n.Name)
			g.Expect(n.Status.NodeInfo.OSImage).To(Equal("Talos ("+talos+")"), "Node %s", n.Name)
		}
	}, "1m", "2s").Should(Succeed())
	AddReportEntry("nodes", fmt.Sprintf("%d Nodes report kubelet %s on Talos %s", l.ControlPlanes+l.Workers, k8s, talos))
}

// surgeMonitor samples the pools while a rollout runs: how many Machines each pool has
// that are not being deleted, and how many VMs Proxmox holds.
type surgeMonitor struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	// min and max of live Machines per pool ("control-plane", "workers"), max VMs.
	min, max map[string]int
	maxVMs   int
	samples  int
}

func startSurgeMonitor(ctx context.Context, l *lab.Lab) *surgeMonitor {
	m := &surgeMonitor{stop: make(chan struct{}), done: make(chan struct{}), min: map[string]int{}, max: map[string]int{}}
	go func() {
		defer close(m.done)
		defer GinkgoRecover()
		for {
			m.sample(ctx, l)
			select {
			case <-m.stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return m
}

func (m *surgeMonitor) sample(ctx context.Context, l *lab.Lab) {
	machines := &clusterv1.MachineList{}
	if err := l.Mgmt.Client.List(ctx, machines, client.InNamespace(l.Namespace),
		client.MatchingLabels{clusterv1.ClusterNameLabel: l.ClusterName}); err != nil {
		return
	}
	live := map[string]int{"control-plane": 0, "workers": 0}
	for _, mc := range machines.Items {
		if !mc.DeletionTimestamp.IsZero() {
			continue
		}
		pool := "workers"
		if _, ok := mc.Labels[clusterv1.MachineControlPlaneLabel]; ok {
			pool = "control-plane"
		}
		live[pool]++
	}
	vms := len(l.PVE.Inventory().VMs)
	m.mu.Lock()
	defer m.mu.Unlock()
	for pool, n := range live {
		if old, ok := m.min[pool]; !ok || n < old {
			m.min[pool] = n
		}
		if n > m.max[pool] {
			m.max[pool] = n
		}
	}
	if vms > m.maxVMs {
		m.maxVMs = vms
	}
	m.samples++
}

// stopAndCheck ends the sampling and checks that each pool was rolled one machine at a
// time: never more live Machines than replicas (no surge: the pool has no spare address),
// never fewer than replicas-1, never more VMs than replicas in total.
func (m *surgeMonitor) stopAndCheck(l *lab.Lab) {
	GinkgoHelper()
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	line := fmt.Sprintf("%d samples: control-plane Machines %d..%d, workers %d..%d, at most %d VMs",
		m.samples, m.min["control-plane"], m.max["control-plane"], m.min["workers"], m.max["workers"], m.maxVMs)
	GinkgoWriter.Println(line)
	AddReportEntry("rollout", line)
	Expect(m.max["control-plane"]).To(BeNumerically("<=", l.ControlPlanes), line)
	Expect(m.min["control-plane"]).To(BeNumerically(">=", l.ControlPlanes-1), line)
	Expect(m.max["workers"]).To(BeNumerically("<=", l.Workers), line)
	Expect(m.min["workers"]).To(BeNumerically(">=", l.Workers-1), line)
	Expect(m.maxVMs).To(BeNumerically("<=", l.ControlPlanes+l.Workers), line)
}
