package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/backoff"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv/pvetest"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

const gcURL = "https://127.0.0.1:8006"

func gcCluster(ns, name, storage, version string) *infrav1.ProxmoxTalosCluster {
	return &infrav1.ProxmoxTalosCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{clusterv1.ClusterNameLabel: name}},
		Spec: infrav1.ProxmoxTalosClusterSpec{
			Proxmox: infrav1.ProxmoxAPI{URL: gcURL}, ImageStorage: storage,
			Talos: infrav1.TalosImageSpec{Version: version},
		},
	}
}

func gcMachine(ns, name, cluster string, talos *infrav1.TalosImageSpec, owned ...string) *infrav1.ProxmoxTalosMachine {
	m := &infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{clusterv1.ClusterNameLabel: cluster}},
		Spec:       infrav1.ProxmoxTalosMachineSpec{Talos: talos},
	}
	for _, v := range owned {
		m.Spec.OwnedVolumes = append(m.Spec.OwnedVolumes, infrav1.OwnedVolume{Node: "pve1", VolID: v})
	}
	return m
}

// defaultImage is the storage name of the default-extension nocloud image of version.
func defaultImage(t *testing.T, version string) string {
	t.Helper()
	spec := infrav1.ProxmoxTalosClusterSpec{Talos: infrav1.TalosImageSpec{Version: version}}
	spec.Default()
	name, err := sharedImageName(spec.Talos)
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// TestImagesInUse: which images the machines of every cluster on one URL and storage use.
func TestImagesInUse(t *testing.T) {
	const metalImg = "talos-v1.13.9-metal-amd64-" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + ".qcow2"
	old, next := defaultImage(t, "v1.13.9"), defaultImage(t, "v1.14.1")
	for _, tc := range []struct {
		name         string
		objs         []client.Object
		want         []string
		wantResolved bool
	}{
		{name: "no machines", objs: []client.Object{gcCluster("a", "a", "local", "v1.13.9")}, want: nil, wantResolved: true},
		{
			name: "cluster default and a template's override",
			objs: []client.Object{
				gcCluster("a", "a", "local", "v1.13.9"),
				gcMachine("a", "m0", "a", nil),
				gcMachine("a", "m1", "a", &infrav1.TalosImageSpec{Version: "v1.14.1"}),
			},
			want: []string{old, next}, wantResolved: true,
		},
		{
			name: "another cluster on the same storage counts, one on another storage does not",
			objs: []client.Object{
				gcCluster("a", "a", "local", "v1.14.1"),
				gcCluster("b", "b", "local", "v1.13.9"), gcMachine("b", "m0", "b", nil),
				gcCluster("c", "c", "other", "v1.13.8"), gcMachine("c", "m0", "c", nil),
			},
			want: []string{old}, wantResolved: true,
		},
		{
			name: "metal machines use what they recorded",
			objs: []client.Object{
				gcCluster("a", "a", "local", "v1.13.9"),
				gcMachine("a", "m0", "a", &infrav1.TalosImageSpec{Platform: infrav1.TalosPlatformMetal}, "local:import/"+metalImg, "local:iso/x.iso"),
			},
			want: []string{metalImg}, wantResolved: true,
		},
		{
			name: "a machine whose cluster is unknown blocks deletions",
			objs: []client.Object{gcCluster("a", "a", "local", "v1.13.9"), gcMachine("z", "m0", "gone", nil)},
			want: nil, wantResolved: false,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			spec := gcCluster("a", "a", "local", "").Spec
			spec.Default()
			got, resolved, err := imagesInUse(context.Background(), fakeClient(t, tc.objs...), spec)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(resolved).To(Equal(tc.wantResolved))
			var names []string
			for n := range got {
				names = append(names, n)
			}
			if tc.want == nil {
				g.Expect(names).To(BeEmpty())
			} else {
				g.Expect(names).To(ConsistOf(tc.want))
			}
		})
	}
}

type gcEnv struct {
	sim *pvesim.Server
	pve proxmox.Client
}

func startGCSim(t *testing.T, taskDuration time.Duration) *gcEnv {
	t.Helper()
	sim, pve := pvetest.Start(t, pvesim.Config{
		Nodes: []pvesim.NodeConfig{{Name: "pve1"}},
		Storages: []pvesim.StorageConfig{
			{Name: "local", Type: "dir", Content: "iso,import"},
			{Name: "local-lvm", Type: "lvmthin", Content: "images"},
		},
		TaskDuration: pvesim.Duration(taskDuration),
	})
	return &gcEnv{sim: sim, pve: pve}
}

func (e *gcEnv) images() []string {
	var out []string
	for _, v := range e.sim.Inventory().VolumesByContent("import") {
		out = append(out, v.VolID[strings.Index(v.VolID, "/")+1:])
	}
	return out
}

// TestCollectImages drives passes by hand (clock included): an unused image waits out the
// grace period; a machine the cache does not show yet but the API server does (it was
// created a moment ago) keeps its image; a file that is not this provider's is never a
// candidate; the deletion is a task that a later pass follows; an idle storage is not
// listed again.
func TestCollectImages(t *testing.T) {
	g := NewWithT(t)
	env := startGCSim(t, 0)
	old, next := defaultImage(t, "v1.13.9"), defaultImage(t, "v1.14.1")
	for _, f := range []string{old, next, "someone-elses.qcow2"} {
		_, err := env.sim.AddVolume("local", "pve1", "import", f, []byte("x"))
		g.Expect(err).NotTo(HaveOccurred())
	}
	if _, err := imagefactory.ParseStorageName("someone-elses.qcow2"); err == nil {
		t.Fatal("the foreign file must not parse as a provider image")
	}

	cl := gcCluster("a", "a", "local", "v1.14.1")
	// The cache shows only the upgraded machine; the API server also has a machine of the
	// old version that was just created (a rollback, say).
	cached := fakeClient(t, cl, gcMachine("a", "new", "a", nil))
	live := fakeClient(t, cl, gcMachine("a", "new", "a", nil), gcMachine("a", "rollback", "a", &infrav1.TalosImageSpec{Version: "v1.13.9"}))
	gc := &ImageGC{Grace: time.Minute, Reader: live}
	r := &Reconciler{Client: cached, Timing: backoff.Timing{Min: time.Second, Max: 10 * time.Second}, ImageGC: gc}
	s := NewScope(nil, cl.DeepCopy())
	s.Spec.Proxmox.URL = gcURL
	s.pve = env.pve
	st := gc.store(storageKey(s.Spec))
	ctx := context.Background()
	t0 := time.Now()

	after, err := r.collectImages(ctx, s, st, t0)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(after).To(Equal(time.Minute), "the old image waits out the grace period")
	g.Expect(env.images()).To(ConsistOf(old, next, "someone-elses.qcow2"))

	after, err = r.collectImages(ctx, s, st, t0.Add(61*time.Second))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(after).To(Equal(time.Minute), "the uncached list shows a user: kept, looked at again later")
	g.Expect(env.images()).To(ConsistOf(old, next, "someone-elses.qcow2"))
	g.Expect(st.tasks).To(BeEmpty())

	// The rollback machine is gone again: the cache and the API server agree.
	gc.Reader = cached
	after, err = r.collectImages(ctx, s, st, t0.Add(62*time.Second))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(after).To(Equal(59*time.Second), "a new grace period from the re-check")
	calls := env.sim.Stats().Calls["DELETE /nodes/{node}/storage/{storage}/content/{volume}"]
	g.Expect(calls).To(BeZero())
	_, err = r.collectImages(ctx, s, st, t0.Add(123*time.Second))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(st.tasks).To(HaveLen(1), "the deletion is a recorded task")
	g.Expect(env.sim.Stats().Calls["DELETE /nodes/{node}/storage/{storage}/content/{volume}"]).To(Equal(1))

	g.Eventually(func() []string {
		_, err := r.collectImages(ctx, s, st, t0.Add(124*time.Second))
		g.Expect(err).NotTo(HaveOccurred())
		return env.images()
	}, 10*time.Second, 20*time.Millisecond).Should(ConsistOf(next, "someone-elses.qcow2"))
	g.Eventually(func() map[string]gcTask {
		_, _ = r.collectImages(ctx, s, st, t0.Add(125*time.Second))
		return st.tasks
	}, 10*time.Second, 20*time.Millisecond).Should(BeEmpty(), "the finished task is forgotten")

	// Idle: nothing changed, no Proxmox call.
	before := env.sim.Stats().Calls
	after, err = r.collectImages(ctx, s, st, t0.Add(200*time.Second))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(after).To(BeZero())
	g.Expect(env.sim.Stats().Calls).To(Equal(before))
}

// TestCollectImagesWaitsForCreates: no deletion starts on a node with a running qmcreate
// (a machine that picked the image imports it in that task).
func TestCollectImagesWaitsForCreates(t *testing.T) {
	g := NewWithT(t)
	env := startGCSim(t, 5*time.Second)
	old := defaultImage(t, "v1.13.9")
	vol, err := env.sim.AddVolume("local", "pve1", "import", old, []byte("x"))
	g.Expect(err).NotTo(HaveOccurred())
	// A create task that runs for a while (5 s per task step), importing the image.
	_, err = env.pve.StartCreateVM(context.Background(), proxmox.VMSpec{
		Node: "pve1", VMID: 100, Name: "x", Cores: 1, Sockets: 1, MemoryMiB: 512, CPUType: "host", BIOS: "seabios",
		BootDisk: proxmox.Disk{Slot: "scsi0", Storage: "local-lvm", ImportFrom: vol},
	})
	g.Expect(err).NotTo(HaveOccurred())

	cl := gcCluster("a", "a", "local", "v1.14.1")
	c := fakeClient(t, cl)
	gc := &ImageGC{Grace: time.Second}
	r := &Reconciler{Client: c, Timing: backoff.Timing{Min: time.Second, Max: 10 * time.Second}, ImageGC: gc}
	s := NewScope(nil, cl.DeepCopy())
	s.Spec.Proxmox.URL = gcURL
	s.pve = env.pve
	st := gc.store(storageKey(s.Spec))
	t0 := time.Now()
	_, err = r.collectImages(context.Background(), s, st, t0)
	g.Expect(err).NotTo(HaveOccurred())
	after, err := r.collectImages(context.Background(), s, st, t0.Add(2*time.Second))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(after).To(Equal(10*time.Second), "postponed while the create runs")
	g.Expect(env.images()).To(ConsistOf(old))
	g.Expect(st.tasks).To(BeEmpty())
}
