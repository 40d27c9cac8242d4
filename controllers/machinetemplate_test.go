package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// startTemplateManager runs only the ProxmoxTalosMachineTemplate controller: it makes no
// Proxmox call, so these tests need no simulator traffic.
func startTemplateManager(t *testing.T) *manager {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := (&ProxmoxTalosMachineTemplateReconciler{Client: mgr.GetClient()}).
		SetupWithManager(ctx, mgr, controller.Options{MaxConcurrentReconciles: 2, SkipNameValidation: ptr.To(true)}); err != nil {
		t.Fatal(err)
	}
	m := &manager{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(m.stop)
	return m
}

func (f *fixture) template(name string, spec infrav1.ProxmoxTalosMachineSpec, mutate func(*infrav1.ProxmoxTalosMachineTemplate)) {
	f.t.Helper()
	tmpl := &infrav1.ProxmoxTalosMachineTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       infrav1.ProxmoxTalosMachineTemplateSpec{Template: infrav1.ProxmoxTalosMachineTemplateResource{Spec: spec}},
	}
	if mutate != nil {
		mutate(tmpl)
	}
	f.create(tmpl)
}

func (f *fixture) getTemplate(name string) *infrav1.ProxmoxTalosMachineTemplate {
	f.t.Helper()
	var tmpl infrav1.ProxmoxTalosMachineTemplate
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: name}, &tmpl); err != nil {
		f.t.Fatal(err)
	}
	return &tmpl
}

// autoscalerView reads a template the way the cluster autoscaler's Cluster API provider
// does: through the dynamic client, as unstructured, status.capacity with
// unstructured.NestedStringMap and each value with resource.ParseQuantity, dropping what
// does not parse (cloudprovider/clusterapi/clusterapi_unstructured.go,
// resourceCapacityFromInfrastructureObject). nodeInfo is read the same way.
type autoscalerView struct {
	capacity map[corev1.ResourceName]resource.Quantity
	nodeInfo map[string]string
}

func readAsAutoscaler(ns, name string) (autoscalerView, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(infrav1.GroupVersion.WithKind("ProxmoxTalosMachineTemplate"))
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		return autoscalerView{}, err
	}
	v := autoscalerView{capacity: map[corev1.ResourceName]resource.Quantity{}}
	raw, found, err := unstructured.NestedStringMap(u.Object, "status", "capacity")
	if err != nil {
		return v, fmt.Errorf("status.capacity is not a map of strings (the autoscaler would ignore it): %w", err)
	}
	if !found {
		return v, fmt.Errorf("no status.capacity yet")
	}
	for k, s := range raw {
		if q, err := resource.ParseQuantity(s); err == nil {
			v.capacity[corev1.ResourceName(k)] = q
		}
	}
	if v.nodeInfo, _, err = unstructured.NestedStringMap(u.Object, "status", "nodeInfo"); err != nil {
		return v, fmt.Errorf("status.nodeInfo is not a map of strings: %w", err)
	}
	return v, nil
}

// TestMachineTemplateCapacity: a created template gets status.capacity and status.nodeInfo
// from its spec and its cluster, in a form the autoscaler parses.
func TestMachineTemplateCapacity(t *testing.T) {
	requireEnv(t)
	startTemplateManager(t)

	tests := []struct {
		name string
		// clusterArch: the ProxmoxTalosCluster's spec.talos.architecture; nil: no cluster
		clusterArch *string
		link        string // how the template names its cluster: owner, label or "" (shared)
		spec        infrav1.ProxmoxTalosMachineSpec
		want        map[corev1.ResourceName]string
		wantArch    string
	}{
		{
			name: "worker template owned by an arm64 cluster", clusterArch: ptr.To("arm64"), link: "owner",
			spec: infrav1.ProxmoxTalosMachineSpec{Sockets: 2, Cores: 2, MemoryMiB: 8192, BootDisk: infrav1.Disk{SizeGiB: 40}},
			want: map[corev1.ResourceName]string{"cpu": "4", "memory": "8Gi", "ephemeral-storage": "39714Mi"}, wantArch: "arm64",
		},
		{
			name: "defaults (only sockets set), labelled with a cluster that leaves the architecture unset", clusterArch: ptr.To(""), link: "label",
			spec: infrav1.ProxmoxTalosMachineSpec{Sockets: 1},
			want: map[corev1.ResourceName]string{"cpu": "2", "memory": "4Gi", "ephemeral-storage": "19234Mi"}, wantArch: "amd64",
		},
		{
			name: "shared template (a ClusterClass's) with an architecture override", link: "",
			spec: infrav1.ProxmoxTalosMachineSpec{Cores: 8, MemoryMiB: 16384, Talos: &infrav1.TalosImageSpec{Architecture: "arm64"}},
			want: map[corev1.ResourceName]string{"cpu": "8", "memory": "16Gi", "ephemeral-storage": "19234Mi"}, wantArch: "arm64",
		},
		{
			name: "shared template without override: architecture left to the autoscaler", link: "",
			spec: infrav1.ProxmoxTalosMachineSpec{Cores: 1, MemoryMiB: 2048},
			want: map[corev1.ResourceName]string{"cpu": "1", "memory": "2Gi", "ephemeral-storage": "19234Mi"}, wantArch: "",
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			f := newFixture(t, fmt.Sprintf("tmplcap%d", i))
			if tt.clusterArch != nil {
				f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) {
					s.ImageStorage = templateTestImageStorage
					s.Talos.Architecture = *tt.clusterArch
				})
			}
			f.template("workers", tt.spec, func(tmpl *infrav1.ProxmoxTalosMachineTemplate) {
				switch tt.link {
				case "owner":
					var cl clusterv1.Cluster
					g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &cl)).To(Succeed())
					tmpl.OwnerReferences = []metav1.OwnerReference{ownerRef(&cl, "Cluster")}
				case "label":
					tmpl.Labels = map[string]string{clusterv1.ClusterNameLabel: f.cluster}
				}
			})

			var view autoscalerView
			g.Eventually(func() error {
				var err error
				view, err = readAsAutoscaler(f.ns, "workers")
				return err
			}, 30*time.Second, 100*time.Millisecond).Should(Succeed())

			g.Expect(view.capacity).To(HaveLen(len(tt.want)), "capacity %v", view.capacity)
			for k, s := range tt.want {
				g.Expect(view.capacity).To(HaveKey(k))
				got := view.capacity[k]
				g.Expect(got.Equal(resource.MustParse(s))).To(BeTrue(), "%s = %s, want %s", k, got.String(), s)
			}
			g.Expect(view.nodeInfo["operatingSystem"]).To(Equal("linux"))
			if tt.wantArch == "" {
				g.Expect(view.nodeInfo).NotTo(HaveKey("architecture"))
			} else {
				g.Expect(view.nodeInfo["architecture"]).To(Equal(tt.wantArch))
			}
		})
	}
}

// TestMachineTemplateStatusSurvives: the published status outlives what happens to a
// template in Cluster API's hands (its metadata patch adding the Cluster owner reference,
// a provider restart), and an idle template is not rewritten.
func TestMachineTemplateStatusSurvives(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, "tmplkeep")
	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) { s.ImageStorage = templateTestImageStorage })
	m := startTemplateManager(t)
	f.template("workers", infrav1.ProxmoxTalosMachineSpec{Cores: 4, MemoryMiB: 8192}, nil)

	publishedWith := func(arch string) func() error {
		return func() error {
			st := f.getTemplate("workers").Status
			if st.Capacity.Cpu().String() != "4" || st.NodeInfo.Architecture != arch {
				return fmt.Errorf("status %+v, want cpu 4 and architecture %q", st, arch)
			}
			return nil
		}
	}
	// Not linked to its cluster yet: capacity without architecture.
	g.Eventually(publishedWith(""), 30*time.Second, 100*time.Millisecond).Should(Succeed())

	// What the MachineDeployment controller does (reconcileExternalTemplateReference): a
	// merge patch of the owner references only. The status stays and gains the cluster's
	// architecture.
	tmpl := f.getTemplate("workers")
	var cl clusterv1.Cluster
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &cl)).To(Succeed())
	base := tmpl.DeepCopy()
	tmpl.OwnerReferences = append(tmpl.OwnerReferences, ownerRef(&cl, "Cluster"))
	g.Expect(k8s.Patch(context.Background(), tmpl, client.MergeFrom(base))).To(Succeed())
	g.Expect(f.getTemplate("workers").Status.Capacity.Cpu().String()).To(Equal("4"), "the metadata patch kept the status")
	published := publishedWith("amd64")
	g.Eventually(published, 30*time.Second, 100*time.Millisecond).Should(Succeed())

	// A restart finds nothing to do: the status stays and is not written again.
	m.stop()
	rv := f.getTemplate("workers").ResourceVersion
	startTemplateManager(t)
	g.Consistently(func() string { return f.getTemplate("workers").ResourceVersion }, 3*time.Second, 200*time.Millisecond).Should(Equal(rv))
	g.Expect(published()).To(Succeed())

	// `clusterctl move` does not carry status: the recreated template is published again.
	old := f.getTemplate("workers")
	g.Expect(k8s.Delete(context.Background(), old)).To(Succeed())
	f.template("workers", old.Spec.Template.Spec, func(tm *infrav1.ProxmoxTalosMachineTemplate) { tm.OwnerReferences = old.OwnerReferences })
	g.Eventually(published, 30*time.Second, 100*time.Millisecond).Should(Succeed())
}

// TestMachineTemplateFollowsChanges: the published values follow what they are computed
// from: a cluster that appears after the template, a change of the cluster's Talos
// architecture, and an in-place spec edit (refused by the webhook, so it happens only with
// webhooks off; topology's dry-run requests, which the webhook lets through, persist
// nothing).
func TestMachineTemplateFollowsChanges(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, "tmplfollow")
	startTemplateManager(t)
	f.template("workers", infrav1.ProxmoxTalosMachineSpec{MemoryMiB: 4096}, func(tm *infrav1.ProxmoxTalosMachineTemplate) {
		tm.Labels = map[string]string{clusterv1.ClusterNameLabel: f.cluster}
	})
	status := func() *infrav1.ProxmoxTalosMachineTemplateStatus { return &f.getTemplate("workers").Status }
	g.Eventually(func() string { return status().Capacity.Memory().String() }, 30*time.Second, 100*time.Millisecond).Should(Equal("4Gi"))
	g.Expect(status().NodeInfo.Architecture).To(BeEmpty(), "no cluster yet")

	f.createCluster(func(s *infrav1.ProxmoxTalosClusterSpec) {
		s.ImageStorage = templateTestImageStorage
		s.Talos.Architecture = "arm64"
	})
	g.Eventually(func() string { return status().NodeInfo.Architecture }, 30*time.Second, 100*time.Millisecond).Should(Equal("arm64"))

	var infra infrav1.ProxmoxTalosCluster
	g.Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &infra)).To(Succeed())
	base := infra.DeepCopy()
	infra.Spec.Talos.Architecture = "amd64"
	g.Expect(k8s.Patch(context.Background(), &infra, client.MergeFrom(base))).To(Succeed())
	g.Eventually(func() string { return status().NodeInfo.Architecture }, 30*time.Second, 100*time.Millisecond).Should(Equal("amd64"))

	tmpl := f.getTemplate("workers")
	tbase := tmpl.DeepCopy()
	tmpl.Spec.Template.Spec.MemoryMiB = 12288
	tmpl.Spec.Template.Spec.Sockets = 2
	g.Expect(k8s.Patch(context.Background(), tmpl, client.MergeFrom(tbase))).To(Succeed())
	g.Eventually(func() string { return status().Capacity.Memory().String() }, 30*time.Second, 100*time.Millisecond).Should(Equal("12Gi"))
	g.Expect(status().Capacity.Cpu().String()).To(Equal("4"))
}

// templateTestImageStorage keeps the clusters these tests create (and leave behind) from
// sharing the suite pvesim's image storage with other tests' clusters: a live cluster on the
// same Proxmox API and image storage keeps the images when another cluster is deleted, so
// the other tests' "nothing left in Proxmox" checks would see them.
const templateTestImageStorage = "tmplcap-images"
