package controllers

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/backoff"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machine"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/workload"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory/factorysim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// The suite shares one management API server, one PVE simulator and one Image Factory
// simulator; every test works in its own namespace.
var (
	env     *envtest.Environment
	cfg     *rest.Config
	k8s     client.Client
	scheme  = runtime.NewScheme()
	pve     *pvesim.Server
	factory *factorysim.Server
	skipEnv string
)

const talosVersion = "v1.13.9"

// bootstrapToken stands for the secrets inside bootstrap data; tests check it never leaks.
const bootstrapToken = "not-a-real-token-4f1d2c"

func TestMain(m *testing.M) {
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, clusterv1.AddToScheme, ipamv1.AddToScheme, infrav1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	if os.Getenv("TEST_VERBOSE") != "" {
		ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	}
	var err error
	env, err = testenv.New(testenv.Options{})
	if err != nil {
		skipEnv = err.Error()
		testenv.NoAssetsInMain(err)
		os.Exit(m.Run())
	}
	if cfg, err = env.Start(); err != nil {
		panic(err)
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		panic(err)
	}
	pve, err = pvesim.New(pvesim.Config{
		Version: "9.1.2",
		Nodes:   []pvesim.NodeConfig{{Name: "pve1"}, {Name: "pve2"}, {Name: "pve3"}},
		Storages: []pvesim.StorageConfig{
			{Name: "local", Type: "dir", Content: "iso,import"},
			{Name: "local-lvm", Type: "lvmthin", Content: "images"},
			// Shared import storage: one image download serves every node.
			{Name: "images", Type: "dir", Content: "import", Shared: true},
		},
		TaskDuration: pvesim.Duration(2 * time.Millisecond),
	})
	if err != nil {
		panic(err)
	}
	if err := pve.StartTLS(); err != nil {
		panic(err)
	}
	factory = factorysim.New(factorysim.Options{})
	if err := factory.Start(); err != nil {
		panic(err)
	}
	code := m.Run()
	factory.Close()
	pve.Close()
	_ = env.Stop()
	os.Exit(code)
}

func requireEnv(t *testing.T) {
	t.Helper()
	if env == nil {
		testenv.SkipOrFail(t, "envtest unavailable: %s; %s", skipEnv, testenv.HowToGetAssets)
	}
}

// manager is one run of the provider's controllers.
type manager struct {
	cancel context.CancelFunc
	done   chan struct{}
}

var proxmoxFactory = clients.NewProxmoxFactory(clients.ProxmoxOptions{
	Limits: proxmox.Limits{QPS: -1, MaxInFlight: 16, MaxInFlightPerNode: 8},
	Retry:  proxmox.RetryPolicy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond},
	Tune: func(c *proxmox.Config) {
		c.TaskPollInitial = 5 * time.Millisecond
		c.TaskPollMax = 50 * time.Millisecond
		c.TaskTimeout = 20 * time.Second
	},
})

var testTiming = backoff.Timing{Min: 100 * time.Millisecond, Max: time.Second}

// testImageGCGrace is how long an unused Talos image waits before it is collected.
const testImageGCGrace = 500 * time.Millisecond

var managerRuns atomic.Int32

// startManager runs both controllers against the management API server until stop.
func startManager(t *testing.T) *manager {
	t.Helper()
	managerRuns.Add(1)
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
	opts := controller.Options{MaxConcurrentReconciles: 4, SkipNameValidation: ptr.To(true)}
	workloadClusters := workload.New(mgr.GetClient(), mgr.GetScheme(), workload.Options{UserAgent: "capi-proxmox-talos-test"})
	if err := (&ProxmoxTalosClusterReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("proxmoxtaloscluster"), Proxmox: proxmoxFactory, Timing: testTiming,
		ImageGCGrace: testImageGCGrace,
	}).SetupWithManager(ctx, mgr, opts); err != nil {
		t.Fatal(err)
	}
	if err := (&ProxmoxTalosMachineReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("proxmoxtalosmachine"), Proxmox: proxmoxFactory,
		ImageFactory: clients.NewImageFactoryFactory(imagefactory.WithRetryPolicy(imagefactory.RetryPolicy{Attempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond})),
		Workload:     workloadClusters,
		Timing:       machine.Timing{Timing: testTiming, ShutdownTimeout: 2 * time.Second},
	}).SetupWithManager(ctx, mgr, opts); err != nil {
		t.Fatal(err)
	}
	m := &manager{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		if err := mgr.Start(ctx); err != nil {
			// A reconcile still inside a Proxmox call when the manager is cancelled can
			// outlast the 30 s grace period on a loaded machine; the tests assert on the
			// outcome (one VM per machine, nothing leaked), not on how fast a kill is.
			if strings.Contains(err.Error(), "failed waiting for all runnables to end") {
				t.Logf("manager (slow shutdown, not a failure): %v", err)
				return
			}
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(m.stop)
	return m
}

func (m *manager) stop() {
	m.cancel()
	<-m.done
}

// --- fixtures: what Cluster API and the bootstrap provider would create ---

type fixture struct {
	t       *testing.T
	ns      string
	cluster string
}

func newFixture(t *testing.T, name string) *fixture {
	t.Helper()
	requireEnv(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, ns: ns.Name, cluster: name}
}

func (f *fixture) create(obj client.Object) {
	f.t.Helper()
	obj.SetNamespace(f.ns)
	if err := k8s.Create(context.Background(), obj); err != nil {
		f.t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

// createCluster creates the credentials Secret, the Cluster and the ProxmoxTalosCluster
// owned by it, with mutate applied to the ProxmoxTalosCluster spec.
func (f *fixture) createCluster(mutate func(*infrav1.ProxmoxTalosClusterSpec)) {
	f.t.Helper()
	f.createClusterOn(pve, mutate)
}

// createClusterOn is createCluster against a Proxmox simulator of the test's own.
func (f *fixture) createClusterOn(pve *pvesim.Server, mutate func(*infrav1.ProxmoxTalosClusterSpec)) {
	f.t.Helper()
	f.create(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: f.cluster + "-proxmox"},
		Data: map[string][]byte{
			infrav1.CredentialsTokenIDKey:     []byte(pvesim.DefaultTokenID),
			infrav1.CredentialsTokenSecretKey: []byte(pvesim.DefaultTokenSecret),
			infrav1.CredentialsCABundleKey:    pve.CAPEM(),
		},
	})
	cl := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: f.cluster},
		Spec: clusterv1.ClusterSpec{InfrastructureRef: clusterv1.ContractVersionedObjectReference{
			APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosCluster", Name: f.cluster,
		}},
	}
	f.create(cl)
	spec := infrav1.ProxmoxTalosClusterSpec{
		Proxmox: infrav1.ProxmoxAPI{
			URL:            strings.TrimSuffix(pve.URL(), "/api2/json"),
			CredentialsRef: infrav1.SecretReference{Name: f.cluster + "-proxmox"},
		},
		ControlPlaneEndpointPool: "nodes",
		IPPools: []infrav1.IPPool{{
			Name: "nodes", Addresses: []string{"127.10.0.10-127.10.0.40"}, Prefix: 16, Gateway: "127.10.0.1", DNSServers: []string{"127.10.0.2"},
		}},
		// factorysim serves plain http on loopback: the API's explicit opt-in.
		Talos:        infrav1.TalosImageSpec{Version: talosVersion, FactoryURL: factory.URL(), InsecureAllowHTTP: true},
		ImageStorage: "images",
		ISOStorage:   "local",
	}
	if mutate != nil {
		mutate(&spec)
	}
	f.create(&infrav1.ProxmoxTalosCluster{
		ObjectMeta: metav1.ObjectMeta{
			Name:            f.cluster,
			Labels:          map[string]string{clusterv1.ClusterNameLabel: f.cluster},
			OwnerReferences: []metav1.OwnerReference{ownerRef(cl, "Cluster")},
		},
		Spec: spec,
	})
}

func ownerRef(obj client.Object, kind string) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: clusterv1.GroupVersion.String(), Kind: kind, Name: obj.GetName(), UID: obj.GetUID()}
}

// markInfrastructureProvisioned does what Cluster API does once the ProxmoxTalosCluster
// reports provisioned.
func (f *fixture) markInfrastructureProvisioned() {
	f.t.Helper()
	ctx := context.Background()
	eventually(f.t, 30*time.Second, func() error {
		var infra infrav1.ProxmoxTalosCluster
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &infra); err != nil {
			return err
		}
		if !ptr.Deref(infra.Status.Initialization.Provisioned, false) {
			return fmt.Errorf("ProxmoxTalosCluster not provisioned: %+v", infra.Status.Conditions)
		}
		return nil
	})
	var cl clusterv1.Cluster
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &cl); err != nil {
		f.t.Fatal(err)
	}
	base := cl.DeepCopy()
	cl.Status.Initialization.InfrastructureProvisioned = ptr.To(true)
	if err := k8s.Status().Patch(ctx, &cl, client.MergeFrom(base)); err != nil {
		f.t.Fatal(err)
	}
}

type machineOpts struct {
	controlPlane  bool
	failureDomain string
	noBootstrap   bool
	vmID          *int32
	// ipv4 replaces net0's default source (the cluster pool "nodes").
	ipv4 *infrav1.AddressSource
	// talos overrides the cluster's Talos image settings (a Talos upgrade's new template).
	talos *infrav1.TalosImageSpec
}

// createMachine creates the bootstrap data Secret, the Machine and the
// ProxmoxTalosMachine owned by it.
func (f *fixture) createMachine(name string, o machineOpts) {
	f.t.Helper()
	labels := map[string]string{clusterv1.ClusterNameLabel: f.cluster}
	if o.controlPlane {
		labels[clusterv1.MachineControlPlaneLabel] = ""
	}
	m := &clusterv1.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: clusterv1.MachineSpec{
			ClusterName:   f.cluster,
			FailureDomain: o.failureDomain,
			InfrastructureRef: clusterv1.ContractVersionedObjectReference{
				APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosMachine", Name: name,
			},
		},
	}
	if o.noBootstrap {
		m.Spec.Bootstrap.ConfigRef = clusterv1.ContractVersionedObjectReference{APIGroup: "bootstrap.cluster.x-k8s.io", Kind: "TalosConfig", Name: name}
	} else {
		f.create(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-bootstrap-data", Labels: map[string]string{clusterv1.ClusterNameLabel: f.cluster}},
			Data:       map[string][]byte{"value": []byte("version: v1alpha1\nmachine:\n  type: worker\n  token: " + bootstrapToken + "\n")},
		})
		m.Spec.Bootstrap.DataSecretName = ptr.To(name + "-bootstrap-data")
	}
	f.create(m)
	f.create(&infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{ownerRef(m, "Machine")},
		},
		Spec: infrav1.ProxmoxTalosMachineSpec{
			VMID:      o.vmID,
			MemoryMiB: 2048,
			Talos:     o.talos,
			NetworkDevices: []infrav1.NetworkDevice{{
				Name: "net0", IPv4: cmp.Or(o.ipv4, &infrav1.AddressSource{FromPool: "nodes"}),
			}},
		},
	})
}

func (f *fixture) ptm(name string) *infrav1.ProxmoxTalosMachine {
	f.t.Helper()
	var m infrav1.ProxmoxTalosMachine
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: name}, &m); err != nil {
		f.t.Fatal(err)
	}
	return &m
}

func (f *fixture) waitProvisioned(timeout time.Duration, names ...string) {
	f.t.Helper()
	eventually(f.t, timeout, func() error {
		for _, n := range names {
			m := f.ptm(n)
			if !ptr.Deref(m.Status.Initialization.Provisioned, false) {
				return fmt.Errorf("%s not provisioned: step %s, conditions %v", n, m.Status.Step, condSummary(m.Status.Conditions))
			}
		}
		return nil
	})
}

func condSummary(cs []metav1.Condition) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message))
	}
	return strings.Join(parts, "; ")
}

// vmsOf returns the simulator's VMs tagged for a machine of the fixture's cluster.
func (f *fixture) vmsOf(name string) []pvesim.VMInfo {
	var out []pvesim.VMInfo
	for _, vm := range pve.Inventory().VMs {
		if hasTag(vm.Tags, machine.MachineTag(name)) && hasTag(vm.Tags, machine.ClusterTag(f.cluster)) {
			out = append(out, vm)
		}
	}
	return out
}

func hasTag(tags []string, tag string) bool {
	for _, t := range tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}

func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
