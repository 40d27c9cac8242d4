package controllers

import (
	"context"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machine"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// laggingClient is the manager's cached client as a pass sees it when the informer has
// delivered all but the last write of the previous pass: the patch helper writes a pass's
// result in up to three requests (conditions, spec, status), each a watch event, and the
// event of the first wakes the machine while the last is still on its way. Writes and
// every other read go straight to the API server.
type laggingClient struct {
	client.Client
	mu     sync.Mutex
	writes []*infrav1.ProxmoxTalosMachine // what each write of the current pass returned
	stale  *infrav1.ProxmoxTalosMachine   // returned by the next Get of the machine, once
	served int
}

// beginPass arranges the next pass's read: the previous pass's result without its last
// write, if it took more than one.
func (c *laggingClient) beginPass() (wrote int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	wrote = len(c.writes)
	c.stale = nil
	if wrote > 1 {
		c.stale = c.writes[wrote-2]
	}
	c.writes = nil
	return wrote
}

func (c *laggingClient) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.writes)
}

func (c *laggingClient) wrote(obj client.Object) {
	if m, ok := obj.(*infrav1.ProxmoxTalosMachine); ok {
		c.mu.Lock()
		c.writes = append(c.writes, m.DeepCopy())
		c.mu.Unlock()
	}
}

func (c *laggingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if m, ok := obj.(*infrav1.ProxmoxTalosMachine); ok {
		c.mu.Lock()
		stale := c.stale
		c.stale = nil
		if stale != nil {
			c.served++
		}
		c.mu.Unlock()
		if stale != nil && client.ObjectKeyFromObject(stale) == key {
			stale.DeepCopyInto(m)
			return nil
		}
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c *laggingClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	err := c.Client.Patch(ctx, obj, patch, opts...)
	if err == nil {
		c.wrote(obj)
	}
	return err
}

func (c *laggingClient) Status() client.SubResourceWriter {
	return laggingStatus{SubResourceWriter: c.Client.Status(), c: c}
}

type laggingStatus struct {
	client.SubResourceWriter
	c *laggingClient
}

func (s laggingStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	err := s.SubResourceWriter.Patch(ctx, obj, patch, opts...)
	if err == nil {
		s.c.wrote(obj)
	}
	return err
}

// TestStaleCachedMachineMakesNoExtraCalls: a pass that reads the machine from a cache
// that has not yet seen the previous pass's last write must not act on it. Acting on it
// repeated Proxmox work the previous pass had done and recorded in that write: the boot
// ISO uploaded again (status.bootISO missing), the create in flight looked up by its
// config and the node's task list (status.task missing; the config read comes first and is
// what is counted, since the task list also answers task states), the VM just started read
// again (status.powerState missing). The probe of test/bench/scale counted exactly these.
// (A pass's first write can see a conflict the cache caused; the patch helper retries it.)
// A machine whose image is cached, realistic pvesim timing, passes run one after another
// as the work queue runs them (at once after a write, else after the requeue).
func TestStaleCachedMachineMakesNoExtraCalls(t *testing.T) {
	f := newFixture(t, "stale")
	sim, err := pvesim.New(pvesim.Config{
		Version: "9.1.2",
		Profile: pvesim.ProfileRealistic,
		Nodes:   []pvesim.NodeConfig{{Name: "pve1"}},
		Storages: []pvesim.StorageConfig{
			{Name: "local", Type: "dir", Content: "iso,import"},
			{Name: "local-lvm", Type: "lvmthin", Content: "images"},
			{Name: "images", Type: "dir", Content: "import", Shared: true},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.StartTLS(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	f.createClusterOn(sim, nil)
	ctx := context.Background()
	var cl clusterv1.Cluster
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: f.cluster}, &cl); err != nil {
		t.Fatal(err)
	}
	base := cl.DeepCopy()
	cl.Status.Initialization.InfrastructureProvisioned = ptr.To(true)
	if err := k8s.Status().Patch(ctx, &cl, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	lc := &laggingClient{Client: k8s}
	timing := machine.Timing{Timing: testTiming, ShutdownTimeout: 2 * time.Second}
	r := &ProxmoxTalosMachineReconciler{Client: lc, Proxmox: proxmoxFactory, Timing: timing}
	r.steps = &machine.Reconciler{
		Client: lc, Timing: timing,
		Images: clients.NewImageFactoryFactory(imagefactory.WithRetryPolicy(imagefactory.RetryPolicy{Attempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond})),
	}

	// create runs one machine's passes from its creation until it is provisioned and a
	// pass finds nothing left to write (the passes after the start see the VM started),
	// and returns the Proxmox calls they made.
	create := func(name string) map[string]int {
		t.Helper()
		f.createMachine(name, machineOpts{ipv4: &infrav1.AddressSource{DHCP: ptr.To(true)}})
		req := ctrl.Request{NamespacedName: client.ObjectKey{Namespace: f.ns, Name: name}}
		before := sim.Stats().Calls
		deadline := time.Now().Add(60 * time.Second)
		var res ctrl.Result
		lc.beginPass()
		for pass := 1; ; pass++ {
			if pass > 1 && lc.beginPass() == 0 {
				// Nothing written: no event; the requeue brings the machine back.
				time.Sleep(min(res.RequeueAfter, time.Second))
			}
			var err error
			if res, err = r.Reconcile(ctx, req); err != nil {
				t.Logf("%s pass %d: %v", name, pass, err)
				res.RequeueAfter = testTiming.Min
			}
			if ptr.Deref(f.ptm(name).Status.Initialization.Provisioned, false) && lc.pending() == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not provisioned after %d passes: %s", name, pass, condSummary(f.ptm(name).Status.Conditions))
			}
		}
		got := map[string]int{}
		for k, v := range sim.Stats().Calls {
			if d := v - before[k]; d > 0 {
				got[k] = d
			}
		}
		return got
	}
	// The first machine brings the Talos image to the storage (the probe's "not cached");
	// the second finds it there, as the probe's "cached" machine does.
	create("w-0")
	served := lc.served
	got := create("w-1")
	lc.served -= served
	t.Logf("stale reads served: %d; Proxmox calls: %v", lc.served, got)
	if lc.served == 0 {
		t.Fatal("no pass read a stale machine: the test tests nothing")
	}
	for route, want := range map[string]int{
		"POST /nodes/{node}/storage/{storage}/upload":  1,
		"POST /nodes/{node}/qemu":                      1,
		"GET /nodes/{node}/qemu/{vmid}/config":         0,
		"GET /nodes/{node}/qemu/{vmid}/status/current": 0,
		"POST /nodes/{node}/qemu/{vmid}/status/start":  1,
	} {
		if got[route] != want {
			t.Errorf("%s: %d calls, want %d", route, got[route], want)
		}
	}
	if vms := sim.Inventory().VMs; len(vms) != 2 {
		t.Errorf("%d VMs, want 2", len(vms))
	}
}
