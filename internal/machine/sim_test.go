package machine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/backoff"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv/pvetest"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// simEnv runs the step machine's Proxmox side against pvesim, with a fake management
// API (the steps under test use it only for address release).
type simEnv struct {
	t   *testing.T
	sim *pvesim.Server
	pve *proxmox.PVEClient
	r   *Reconciler
	rec *events.FakeRecorder
}

func newSimEnv(t *testing.T, taskDuration time.Duration, tune ...func(*pvesim.Config)) *simEnv {
	t.Helper()
	cfg := pvesim.Config{
		Version: "9.1.2",
		Nodes:   []pvesim.NodeConfig{{Name: "pve1"}, {Name: "pve2"}, {Name: "pve3"}},
		Storages: []pvesim.StorageConfig{
			{Name: "local", Type: "dir", Content: "iso,import"},
			{Name: "local-lvm", Type: "lvmthin", Content: "images"},
		},
		TaskDuration: pvesim.Duration(taskDuration),
	}
	for _, f := range tune {
		f(&cfg)
	}
	sim, pve := pvetest.Start(t, cfg)
	rec := events.NewFakeRecorder(100)
	r := &Reconciler{
		Client:   fakeClient(t),
		Recorder: rec,
		Timing:   Timing{Timing: backoff.Timing{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond}, ShutdownTimeout: time.Second},
	}
	return &simEnv{t: t, sim: sim, pve: pve, r: r, rec: rec}
}

const testUUID = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"

// scope is one machine "w-0" of cluster "lab", recorded on node/vmid with testUUID.
func (e *simEnv) scope(node string, vmid int) *Scope {
	ptm := &infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{Name: "w-0", Namespace: "ns", UID: "8b5e2f7a-0c1d-4e2f-9a3b-4c5d6e7f8a9b",
			Finalizers: []string{infrav1.MachineFinalizer}},
		Spec: infrav1.ProxmoxTalosMachineSpec{Node: node, VMID: ptr.To(int32(vmid)), SMBIOSUUID: testUUID, MemoryMiB: 1024},
	}
	infra := &infrav1.ProxmoxTalosCluster{Spec: infrav1.ProxmoxTalosClusterSpec{
		Talos: infrav1.TalosImageSpec{Version: "v1.13.9"}, ImageStorage: "local", ISOStorage: "local",
	}}
	m := &clusterv1.Machine{ObjectMeta: metav1.ObjectMeta{Name: "w-0", Namespace: "ns"}}
	return NewScope(&clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Name: "lab"}}, infra, m, ptm, e.pve)
}

// createVM puts a VM on Proxmox directly; ours=true gives it the identity of scope's machine.
func (e *simEnv) createVM(node string, vmid int, name string, ours, running bool) {
	e.t.Helper()
	spec := proxmox.VMSpec{Node: node, VMID: vmid, Name: name, MemoryMiB: 1024, BootDisk: proxmox.Disk{Storage: "local-lvm", SizeGiB: 1}}
	if ours {
		spec.Tags = []string{TagManaged, ClusterTag("lab"), MachineTag("w-0")}
		spec.SMBIOSUUID = testUUID
	}
	ctx := context.Background()
	if _, err := e.pve.CreateVM(ctx, spec); err != nil {
		e.t.Fatal(err)
	}
	if running {
		if err := e.pve.StartVM(ctx, node, vmid); err != nil {
			e.t.Fatal(err)
		}
	}
}

// seedImage puts a Talos image on pve1's local storage, as if downloaded, and returns its
// volume id.
func (e *simEnv) seedImage() string {
	e.t.Helper()
	img, err := e.sim.AddVolume("local", "pve1", "import", "talos.qcow2", []byte("qcow2"))
	if err != nil {
		e.t.Fatal(err)
	}
	return img
}

func (e *simEnv) vm(vmid int) (pvesim.VMInfo, bool) { return e.sim.VM(vmid) }

// deleteUntil runs deletion passes until the finalizer is gone or stop says so, each
// pass bounded; it returns the number of passes.
func (e *simEnv) deleteUntil(s *Scope, maxPasses int, stop func() bool) int {
	e.t.Helper()
	for i := 1; i <= maxPasses; i++ {
		start := time.Now()
		res, err := e.r.ReconcileDelete(context.Background(), s)
		if err != nil {
			e.t.Fatalf("pass %d: %v", i, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			e.t.Fatalf("pass %d took %s: a pass must not wait for Proxmox tasks", i, d)
		}
		if !controllerutil.ContainsFinalizer(s.PTM, infrav1.MachineFinalizer) || (stop != nil && stop()) {
			return i
		}
		time.Sleep(min(res.RequeueAfter, 20*time.Millisecond) + time.Millisecond)
	}
	e.t.Fatalf("deletion not finished after %d passes: %+v", maxPasses, s.PTM.Status.Conditions)
	return 0
}

func (e *simEnv) events() []string {
	var out []string
	for {
		select {
		case ev := <-e.rec.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

// TestDeleteLeavesForeignVM: the recorded VMID holds a VM that does not show the
// machine's identity. Deletion leaves it untouched, says what it found (event and
// condition), and still deletes the machine's own VM, found elsewhere by identity.
func TestDeleteLeavesForeignVM(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 5*time.Millisecond)
	e.createVM("pve1", 4321, "someone-elses", false, true)
	e.createVM("pve2", 4400, "w-0", true, true)

	s := e.scope("pve1", 4321)
	var sawForeignCondition bool
	e.deleteUntil(s, 200, func() bool {
		if c := conditionOf(s, infrav1.VMProvisionedCondition); c != nil && c.Reason == infrav1.ForeignVMReason {
			sawForeignCondition = true
		}
		return false
	})

	vm, ok := e.vm(4321)
	g.Expect(ok).To(BeTrue(), "the foreign VM was deleted")
	g.Expect(vm.Status).To(Equal("running"), "the foreign VM was stopped")
	_, ok = e.vm(4400)
	g.Expect(ok).To(BeFalse(), "the machine's own VM at another VMID was left behind")
	g.Expect(sawForeignCondition).To(BeTrue())
	g.Expect(e.events()).To(ContainElement(And(ContainSubstring(infrav1.ForeignVMReason), ContainSubstring("VM 4321 on node pve1"), ContainSubstring("someone-elses"))))
}

// TestDeleteFollowsMovedVM: the VM moved to another node after it was recorded.
// Deletion finds it by identity, records the new node, and shuts it down and destroys
// it there, one Proxmox task per pass (recorded in status.task), never waiting.
func TestDeleteFollowsMovedVM(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 200*time.Millisecond)
	e.createVM("pve2", 4500, "w-0", true, true)
	s := e.scope("pve1", 4500)

	var tasks []string
	passes := e.deleteUntil(s, 500, func() bool {
		if t := s.PTM.Status.Task; t != nil && (len(tasks) == 0 || tasks[len(tasks)-1] != t.Type) {
			tasks = append(tasks, t.Type)
		}
		return false
	})
	_, ok := e.vm(4500)
	g.Expect(ok).To(BeFalse(), "VM left on its new node")
	g.Expect(s.PTM.Spec.Node).To(Equal("pve2"))
	g.Expect(tasks).To(Equal([]string{taskShutdown, taskDestroy}))
	g.Expect(passes).To(BeNumerically(">", 2), "tasks of 200ms were waited for inside a pass")
	g.Expect(e.events()).To(ContainElement(ContainSubstring("moved from node pve1 to pve2")))
}

// TestDeleteRemediatedMachineStopsHard: a machine deleted after a failed health check is
// stopped, not shut down gracefully; one whose check failed once and passed again (the
// MachineHealthCheck leaves OwnerRemediated behind, and TalosControlPlane never clears it) is
// healthy and shuts down gracefully.
func TestDeleteRemediatedMachineStopsHard(t *testing.T) {
	unhealthy := metav1.Condition{Type: clusterv1.MachineHealthCheckSucceededCondition, Status: metav1.ConditionFalse, Reason: "UnhealthyNode"}
	healthy := metav1.Condition{Type: clusterv1.MachineHealthCheckSucceededCondition, Status: metav1.ConditionTrue, Reason: "Succeeded"}
	marked := metav1.Condition{Type: clusterv1.MachineOwnerRemediatedCondition, Status: metav1.ConditionFalse, Reason: "WaitingForRemediation"}
	for _, tc := range []struct {
		name        string
		conditions  []metav1.Condition
		annotations map[string]string
		want        []string
	}{
		{"health check failed", []metav1.Condition{unhealthy}, nil, []string{taskStop, taskDestroy}},
		{"marked for remediation", []metav1.Condition{unhealthy, marked}, nil, []string{taskStop, taskDestroy}},
		{"marked, health not checked since", []metav1.Condition{marked}, nil, []string{taskStop, taskDestroy}},
		{"remediate-machine annotation", []metav1.Condition{healthy}, map[string]string{clusterv1.RemediateMachineAnnotation: ""}, []string{taskStop, taskDestroy}},
		{"recovered after a remediation mark", []metav1.Condition{healthy, marked}, nil, []string{taskShutdown, taskDestroy}},
		{"healthy", []metav1.Condition{healthy}, nil, []string{taskShutdown, taskDestroy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			e := newSimEnv(t, 5*time.Millisecond)
			e.createVM("pve1", 4550, "w-0", true, true)
			s := e.scope("pve1", 4550)
			s.Machine.Status.Conditions = tc.conditions
			s.Machine.Annotations = tc.annotations
			var tasks []string
			e.deleteUntil(s, 200, func() bool {
				if t := s.PTM.Status.Task; t != nil && (len(tasks) == 0 || tasks[len(tasks)-1] != t.Type) {
					tasks = append(tasks, t.Type)
				}
				return false
			})
			g.Expect(tasks).To(Equal(tc.want))
		})
	}
}

// TestDeleteNodeOffline: the VM's node does not answer. Deletion says so (condition and
// Warning event naming the annotation) and retries; when the node is back the deletion
// completes, and on a node gone for good the abandon annotation ends it, leaving the VM.
func TestDeleteNodeOffline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		resolve func(e *simEnv, s *Scope)
		vmLeft  bool
	}{
		{"back online", func(e *simEnv, _ *Scope) { e.sim.SetNodeOnline("pve1", true) }, false},
		{"abandoned", func(_ *simEnv, s *Scope) {
			s.PTM.Annotations = map[string]string{infrav1.AbandonVMAnnotation: "true"}
		}, true},
	} {
		for _, profile := range []string{"fast", "realistic"} {
			t.Run(tc.name+"/"+profile, func(t *testing.T) {
				g := NewWithT(t)
				var tune []func(*pvesim.Config)
				if profile == "realistic" {
					tune = append(tune, realistic)
				}
				e := newSimEnv(t, 5*time.Millisecond, tune...)
				e.createVM("pve1", 4600, "w-0", true, true)
				s := e.scope("pve1", 4600)
				e.sim.SetNodeOnline("pve1", false)

				for i := 0; i < 3; i++ {
					_, err := e.r.ReconcileDelete(context.Background(), s)
					g.Expect(err).NotTo(HaveOccurred())
				}
				g.Expect(controllerutil.ContainsFinalizer(s.PTM, infrav1.MachineFinalizer)).To(BeTrue())
				c := conditionOf(s, infrav1.VMProvisionedCondition)
				g.Expect(c).NotTo(BeNil())
				g.Expect(c.Reason).To(Equal(infrav1.NodeOfflineReason))
				g.Expect(c.Message).To(ContainSubstring(infrav1.AbandonVMAnnotation))
				g.Expect(e.events()).To(ContainElement(And(ContainSubstring(infrav1.NodeOfflineReason), ContainSubstring("pve1"))))

				tc.resolve(e, s)
				e.deleteUntil(s, 5000, nil)
				_, ok := e.vm(4600)
				g.Expect(ok).To(Equal(tc.vmLeft))
				if tc.vmLeft {
					g.Expect(e.events()).To(ContainElement(And(ContainSubstring(infrav1.VMAbandonedReason), ContainSubstring("VM 4600"))))
				}
			})
		}
	}
}

// TestCreateSurvivesLostTaskRecord: the pass that started the create lost its record
// (the controller stopped before the status write). Later passes recognise the VM (or
// the create still running) as the machine's own: exactly one VM, no second create.
func TestCreateSurvivesLostTaskRecord(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 300*time.Millisecond)
	ctx := context.Background()
	img := e.seedImage()
	s := e.scope("pve1", 4700)
	iso, err := BootISOName(s)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = e.sim.AddVolume("local", "pve1", "iso", iso, []byte("iso"))
	g.Expect(err).NotTo(HaveOccurred())
	s.imageVolID = img

	out, err := e.r.createVM(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeFalse(), "the create pass waited for the task")
	g.Expect(s.PTM.Status.Task).NotTo(BeNil())
	g.Expect(s.PTM.Status.Task.Type).To(Equal(taskCreate))
	s.PTM.Status.Task = nil // the status write was lost

	deadline := time.Now().Add(10 * time.Second)
	for !out.done {
		g.Expect(time.Now().Before(deadline)).To(BeTrue(), "not provisioned: %+v", s.PTM.Status.Conditions)
		time.Sleep(20 * time.Millisecond)
		out, err = e.r.createVM(ctx, s)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(ptr.Deref(s.PTM.Spec.VMID, 0)).To(Equal(int32(4700)), "the machine gave up its own VMID")
	}
	n := 0
	for _, vm := range e.sim.Inventory().VMs {
		if strings.Contains(vm.Config["smbios1"], testUUID) {
			n++
		}
	}
	g.Expect(n).To(Equal(1))
	g.Expect(conditionOf(s, infrav1.VMProvisionedCondition).Status).To(Equal(metav1.ConditionTrue))
	// Proxmox showed only "lock: create" meanwhile: the create was recognised from the
	// node's task list, not from the config.
	g.Expect(e.events()).To(ContainElement(ContainSubstring("VMCreateResumed")))
}

func conditionOf(s *Scope, t string) *metav1.Condition {
	for i := range s.PTM.Status.Conditions {
		if s.PTM.Status.Conditions[i].Type == t {
			return &s.PTM.Status.Conditions[i]
		}
	}
	return nil
}

// post sends a form POST to the simulator as the provider's token (for operations the
// provider never makes: migration, HA configuration).
func (e *simEnv) post(path string, form url.Values) {
	e.t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.sim.CAPEM())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, err := http.NewRequest(http.MethodPost, e.sim.URL()+path, strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "PVEAPIToken="+pvesim.DefaultTokenID+"="+pvesim.DefaultTokenSecret)
	res, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		e.t.Fatalf("POST %s: %s %s", path, res.Status, body)
	}
}

func (e *simEnv) waitVM(vmid int, cond func(pvesim.VMInfo) bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if vm, ok := e.vm(vmid); ok && cond(vm) {
			return
		}
		if time.Now().After(deadline) {
			vm, _ := e.vm(vmid)
			e.t.Fatalf("VM %d: condition not reached: %+v", vmid, vm)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunningVMFollowedWhenMoved: a provisioned machine's VM is live-migrated, or
// relocated by HA, while running. The machine stays Ready (VMRunning), records the new
// node, and deletion removes the VM on its new node.
func TestRunningVMFollowedWhenMoved(t *testing.T) {
	for _, tc := range []struct {
		name string
		move func(e *simEnv, vmid int)
	}{
		{"live migration", func(e *simEnv, vmid int) {
			e.post(fmt.Sprintf("/nodes/pve1/qemu/%d/migrate", vmid), url.Values{"target": {"pve2"}, "online": {"1"}, "with-local-disks": {"1"}})
		}},
		{"HA relocation", func(e *simEnv, vmid int) {
			e.post("/cluster/ha/resources", url.Values{"sid": {fmt.Sprintf("vm:%d", vmid)}, "state": {"started"}})
			if err := e.sim.RelocateHA(vmid, "pve2"); err != nil {
				e.t.Fatal(err)
			}
		}},
	} {
		for _, profile := range []string{"fast", "realistic"} {
			t.Run(tc.name+"/"+profile, func(t *testing.T) {
				g := NewWithT(t)
				var tune []func(*pvesim.Config)
				if profile == "realistic" {
					tune = append(tune, realistic)
				}
				e := newSimEnv(t, 5*time.Millisecond, tune...)
				const vmid = 4800
				e.createVM("pve1", vmid, "w-0", true, true)
				s := e.scope("pve1", vmid)
				s.PTM.Status.Initialization.Provisioned = ptr.To(true)
				ctx := context.Background()
				out, err := e.r.startVM(ctx, s)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(out.done).To(BeTrue())
				// Running: its Node is Ready, so passes check the VM (a machine still
				// waiting for its Node does not read Proxmox at all), and it started a
				// while ago (right after a start no snapshot can show the VM yet).
				conditions.Set(s.PTM, metav1.Condition{Type: infrav1.NodeReadyCondition, Status: metav1.ConditionTrue, Reason: infrav1.ReadyReason})
				startedAgo(s, time.Minute)

				tc.move(e, vmid)
				e.waitVM(vmid, func(vm pvesim.VMInfo) bool { return vm.Node == "pve2" && vm.Status == "running" && vm.Lock == "" })

				out, err = e.r.startVM(ctx, s)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(out.done).To(BeTrue())
				g.Expect(s.PTM.Spec.Node).To(Equal("pve2"))
				c := conditionOf(s, infrav1.VMRunningCondition)
				g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "%+v", c)
				g.Expect(conditionOf(s, infrav1.VMProvisionedCondition)).To(BeNil(), "VMProvisioned changed (VM not found?)")
				g.Expect(e.events()).To(ContainElement(ContainSubstring("moved from node pve1 to pve2")))

				e.deleteUntil(s, 5000, nil)
				_, ok := e.vm(vmid)
				g.Expect(ok).To(BeFalse(), "VM left on its new node")
			})
		}
	}
}

// TestCreateInterruptedAtRandomPoints: a slow create (import) of three machines is cut
// off 20 times at random points, as a manager restart would: a fresh Reconciler and a
// fresh Proxmox client (no in-process memory) each time, and with probability 1/2 the
// status of the last pass is lost (the patch never landed). Each machine ends with
// exactly one VM, and nothing else is left on Proxmox: no VMID, disk or config that is
// not one of the machines' VMs.
func TestCreateInterruptedAtRandomPoints(t *testing.T) {
	g := NewWithT(t)
	// Realistic profile; every task takes 1s: the create (with its import) spans many
	// restarts.
	e := newSimEnv(t, time.Second, realistic)
	ctx := context.Background()
	img := e.seedImage()
	rng := rand.New(rand.NewPCG(11, 7))

	type machineState struct {
		ptm  *infrav1.ProxmoxTalosMachine
		done bool
	}
	var machines []*machineState
	for i := range 3 {
		s := e.scope("pve1", 0)
		s.PTM.Name = fmt.Sprintf("w-%d", i)
		s.PTM.UID = types.UID(fmt.Sprintf("uid-%d", i))
		s.PTM.Spec.VMID = nil
		s.PTM.Spec.SMBIOSUUID = fmt.Sprintf("6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5%d", i)
		iso, err := BootISOName(s)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = e.sim.AddVolume("local", "pve1", "iso", iso, []byte("iso"))
		g.Expect(err).NotTo(HaveOccurred())
		machines = append(machines, &machineState{ptm: s.PTM})
	}

	restarts, interruptedCreates := 0, 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		allDone := true
		for _, m := range machines {
			allDone = allDone && m.done
		}
		if allDone && restarts >= 20 {
			break
		}
		g.Expect(time.Now().Before(deadline)).To(BeTrue(), "not all machines provisioned after %d restarts", restarts)
		// A fresh process: new client, new reconciler.
		time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond) // the restart itself
		fresh := newSimEnvFor(t, e.sim)
		passes := rng.IntN(3)
		if restarts >= 20 {
			passes = 1000 // after 20 interruptions, let it finish
		}
		for p := 0; p < passes; p++ {
			progressed := false
			for _, m := range machines {
				if m.done {
					continue
				}
				s := NewScope(&clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Name: "lab"}}, e.scope("pve1", 0).InfraCluster,
					&clusterv1.Machine{ObjectMeta: metav1.ObjectMeta{Name: m.ptm.Name}}, m.ptm.DeepCopy(), fresh.pve)
				s.imageVolID = img
				out, err := fresh.r.createVM(ctx, s)
				g.Expect(err).NotTo(HaveOccurred())
				startedTask := s.PTM.Status.Task != nil && m.ptm.Status.Task == nil
				if restarts < 20 && (startedTask || p == passes-1) && rng.IntN(2) == 0 {
					// Crash before the patch: spec and status changes of this pass are
					// lost (half of the passes that started a task, and half of the last).
					if startedTask {
						interruptedCreates++
					}
					continue
				}
				m.ptm = s.PTM
				m.done = out.done
				progressed = true
			}
			if !progressed && p > 0 {
				break
			}
			time.Sleep(time.Duration(rng.IntN(60)) * time.Millisecond)
		}
		restarts++
		// Invariant at every restart: never two VMs for one machine.
		for _, m := range machines {
			g.Expect(vmsWithUUID(e.sim, m.ptm.Spec.SMBIOSUUID)).To(BeNumerically("<=", 1), "%s has a twin after restart %d", m.ptm.Name, restarts)
		}
	}
	t.Logf("%d restarts, %d creates interrupted before their record was written", restarts, interruptedCreates)
	// The machines may finish before the 20th restart on a quick run; what makes the test
	// mean something is creates whose record was lost right after they were sent.
	g.Expect(interruptedCreates).To(BeNumerically(">=", 2), "creates interrupted before their record was written")

	want := map[int]bool{}
	for _, m := range machines {
		g.Expect(vmsWithUUID(e.sim, m.ptm.Spec.SMBIOSUUID)).To(Equal(1), m.ptm.Name)
		want[int(*m.ptm.Spec.VMID)] = true
	}
	g.Expect(e.sim.WaitTasks(10 * time.Second)).To(Succeed())
	inv := e.sim.Inventory()
	g.Expect(inv.VMs).To(HaveLen(len(machines)), "a VMID is held by something that is no machine's VM")
	for _, vm := range inv.VMs {
		g.Expect(want).To(HaveKey(vm.VMID))
	}
	for _, v := range inv.Volumes {
		if v.Content == "images" {
			g.Expect(want).To(HaveKey(v.VMID), "disk %s of no machine's VM", v.VolID)
		}
	}
}

func vmsWithUUID(sim *pvesim.Server, uuid string) int {
	n := 0
	for _, vm := range sim.Inventory().VMs {
		if strings.Contains(vm.Config["smbios1"], uuid) {
			n++
		}
	}
	return n
}

// newSimEnvFor is a fresh client and reconciler (a restarted manager) on an existing simulator.
// fakeClient is an empty management API with the types the step machine reads.
func fakeClient(t *testing.T) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, clusterv1.AddToScheme, ipamv1.AddToScheme, infrav1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return fake.NewClientBuilder().WithScheme(scheme).Build()
}

func newSimEnvFor(t *testing.T, sim *pvesim.Server) *simEnv {
	t.Helper()
	pve := pvetest.Client(t, sim)
	rec := events.NewFakeRecorder(1000)
	return &simEnv{t: t, sim: sim, pve: pve, rec: rec, r: &Reconciler{Client: fakeClient(t), Recorder: rec,
		Timing: Timing{Timing: backoff.Timing{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond}, ShutdownTimeout: time.Second}}}
}

// TestIdentitySurvivesMove: `clusterctl move` recreates every object with a new UID.
// The machine's MAC addresses and boot ISO name do not change, and deletion of the moved
// machine still removes its VM, its boot ISO and its address claims.
func TestIdentitySurvivesMove(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 5*time.Millisecond)
	ctx := context.Background()
	s := e.scope("pve1", 4900)
	s.InfraCluster.Name = "lab"
	s.InfraCluster.Namespace = "ns"
	s.InfraCluster.Spec.IPPools = []infrav1.IPPool{{Name: "nodes", Addresses: []string{"127.10.0.10-127.10.0.20"}, Prefix: 24, Gateway: "127.10.0.1"}}
	s.PTM.Spec.NetworkDevices = []infrav1.NetworkDevice{{Name: "net0", IPv4: &infrav1.AddressSource{FromPool: "nodes"}}}
	s.refreshSpec()
	g.Expect(e.r.Client.Create(ctx, s.PTM.DeepCopy())).To(Succeed())

	out, err := e.r.claimAddresses(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeFalse(), "addresses are persisted first")
	g.Expect(s.PTM.Spec.IPAddresses).To(HaveLen(1))
	var claims ipamv1.IPAddressClaimList
	g.Expect(e.r.Client.List(ctx, &claims)).To(Succeed())
	g.Expect(claims.Items).To(HaveLen(1))

	// The boot ISO is recorded before it is uploaded; the VM is the machine's.
	iso, err := BootISOName(s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(recordVolume(s, "pve1", "local:iso/"+iso)).To(BeTrue())
	_, err = e.sim.AddVolume("local", "pve1", "iso", iso, []byte("iso"))
	g.Expect(err).NotTo(HaveOccurred())
	e.createVM("pve1", 4900, "w-0", true, true)
	mac := MACAddress(s.PTM, "net0")

	// The move: same spec, new UID, no status.
	moved := s.PTM.DeepCopy()
	moved.UID = "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a"
	moved.Status = infrav1.ProxmoxTalosMachineStatus{}
	ms := NewScope(s.Cluster, s.InfraCluster, s.Machine, moved, e.pve)
	g.Expect(MACAddress(moved, "net0")).To(Equal(mac))
	movedISO, err := BootISOName(ms)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(movedISO).To(Equal(iso))

	e.deleteUntil(ms, 500, nil)
	_, ok := e.vm(4900)
	g.Expect(ok).To(BeFalse(), "VM left")
	for _, v := range e.sim.Inventory().Volumes {
		g.Expect(v.VolID).NotTo(ContainSubstring(iso), "boot ISO left")
	}
	g.Expect(e.r.Client.List(ctx, &claims)).To(Succeed())
	g.Expect(claims.Items).To(BeEmpty(), "address claims left")
	var addrs ipamv1.IPAddressList
	g.Expect(e.r.Client.List(ctx, &addrs)).To(Succeed())
	g.Expect(addrs.Items).To(BeEmpty(), "addresses left")
}

// realistic runs the simulator in its realistic profile (every Proxmox window, in order),
// with Proxmox time compressed 50 times (pvestatd's 10 s tick is 200 ms).
func realistic(c *pvesim.Config) {
	c.Profile = "realistic"
	c.TimeScale = 0.02
}

// qcow2Header is a qcow2 image header announcing virtualSize bytes (what Proxmox's
// import converts, and so what the create's duration grows with).
func qcow2Header(virtualSize uint64) []byte {
	b := make([]byte, 512)
	copy(b, "QFI\xfb")
	binary.BigEndian.PutUint32(b[4:], 3)
	binary.BigEndian.PutUint64(b[24:], virtualSize)
	return b
}

// TestSlowImportDoesNotDelayOtherCluster: one worker serves two clusters' machines. A's
// create imports a large image (seconds); B's a small one. B is provisioned in its own
// time, within one requeue of A's polling passes: no pass waits for A's import.
func TestSlowImportDoesNotDelayOtherCluster(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 5*time.Millisecond, func(c *pvesim.Config) {
		c.ImportThroughput = 1 << 20
		// B's disks on their own storage: this is about the controller, not about
		// Proxmox's storage locks.
		c.Storages = append(c.Storages, pvesim.StorageConfig{Name: "lvm-b", Type: "lvmthin", Content: "images"})
	})
	ctx := context.Background()
	big, err := e.sim.AddVolume("local", "pve1", "import", "talos-big.qcow2", qcow2Header(3<<30)) // 3 s of import
	g.Expect(err).NotTo(HaveOccurred())
	small, err := e.sim.AddVolume("local", "pve2", "import", "talos-small.qcow2", qcow2Header(20<<20))
	g.Expect(err).NotTo(HaveOccurred())

	type job struct {
		s    *Scope
		due  time.Time
		done time.Duration
	}
	mk := func(cluster, node string, vmid int, img, storage string) *job {
		s := e.scope(node, vmid)
		s.Cluster.Name = cluster
		s.PTM.Name = cluster + "-w-0"
		s.PTM.Spec.SMBIOSUUID = uuid.NewString()
		s.PTM.Spec.BootDisk.Storage = storage
		s.refreshSpec()
		iso, err := BootISOName(s)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = e.sim.AddVolume("local", node, "iso", iso, []byte("iso"))
		g.Expect(err).NotTo(HaveOccurred())
		s.imageVolID = img
		return &job{s: s}
	}
	a, b := mk("a", "pve1", 5000, big, "local-lvm"), mk("b", "pve2", 5001, small, "lvm-b")
	start := time.Now()
	var longest time.Duration
	for (a.done == 0 || b.done == 0) && time.Since(start) < 20*time.Second {
		// One worker: take the job that is due first.
		j := a
		if a.done != 0 || (b.done == 0 && b.due.Before(a.due)) {
			j = b
		}
		time.Sleep(time.Until(j.due))
		passStart := time.Now()
		out, err := e.r.createVM(ctx, j.s)
		g.Expect(err).NotTo(HaveOccurred())
		longest = max(longest, time.Since(passStart))
		if out.done {
			j.done = time.Since(start)
			continue
		}
		j.due = time.Now().Add(out.res.RequeueAfter)
	}
	g.Expect(a.done).NotTo(BeZero(), "A not provisioned: %+v %q", a.s.PTM.Status.Conditions, e.events())
	g.Expect(b.done).NotTo(BeZero(), "B not provisioned")
	t.Logf("B provisioned after %s, A after %s; longest pass %s", b.done, a.done, longest)
	g.Expect(longest).To(BeNumerically("<", 500*time.Millisecond), "a pass waited for Proxmox")
	g.Expect(b.done).To(BeNumerically("<", a.done-time.Second), "B waited for A's import")
}

// TestResumedCreateOfAnotherMachineIsNotAdopted: two machines hold the same VMID (one
// allocated it before a restart, the restarted process gave it to another). The second
// sends its create; the first, finding "lock: create" there, resumes the create task from
// the node's task list, whose user is the same API token. When that task succeeds, the VM
// is the other machine's: the first machine must judge it by its config (foreign), give
// the VMID up, and never count the other machine's VM as its own.
func TestResumedCreateOfAnotherMachineIsNotAdopted(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 300*time.Millisecond)
	ctx := context.Background()
	img := e.seedImage()

	other := e.scope("pve1", 4700)
	other.PTM.Name, other.PTM.UID = "w-1", types.UID(uuid.NewString())
	other.PTM.Spec.SMBIOSUUID = uuid.NewString()
	other.Machine.Name = "w-1"
	mine := e.scope("pve1", 4700)
	for _, s := range []*Scope{other, mine} {
		iso, err := BootISOName(s)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = e.sim.AddVolume("local", "pve1", "iso", iso, []byte("iso"))
		g.Expect(err).NotTo(HaveOccurred())
		s.imageVolID = img
	}

	out, err := e.r.createVM(ctx, other)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeFalse())
	g.Expect(other.PTM.Status.Task).NotTo(BeNil(), "the other machine's create is running")

	deadline := time.Now().Add(10 * time.Second)
	for mine.PTM.Spec.VMID != nil {
		g.Expect(time.Now().Before(deadline)).To(BeTrue(), "machine kept VMID 4700: %+v", mine.PTM.Status.Conditions)
		out, err = e.r.createVM(ctx, mine)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out.done && mine.PTM.Spec.VMID != nil).To(BeFalse(),
			"machine w-0 took VM %d, created for w-1, as its own", ptr.Deref(mine.PTM.Spec.VMID, 0))
		time.Sleep(20 * time.Millisecond)
	}
	g.Expect(conditionOf(mine, infrav1.VMProvisionedCondition).Status).NotTo(Equal(metav1.ConditionTrue))
	g.Expect(e.events()).To(ContainElement(ContainSubstring("VMIDConflict")))
}

// TestAllocationSkipsVMIDsOtherMachinesRecorded: after a restart this process holds no
// reservations, and a VMID another machine recorded before it (create not sent yet) looks
// free in Proxmox. Allocation skips it.
func TestAllocationSkipsVMIDsOtherMachinesRecorded(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 5*time.Millisecond)
	ctx := context.Background()
	other := e.scope("pve1", 100)
	other.PTM.Name, other.PTM.UID = "w-1", types.UID(uuid.NewString())
	g.Expect(e.r.Client.Create(ctx, other.PTM.DeepCopy())).To(Succeed())

	s := e.scope("pve1", 0)
	s.PTM.Spec.VMID = nil
	_, err := e.r.createVM(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.PTM.Spec.VMID).NotTo(BeNil())
	g.Expect(*s.PTM.Spec.VMID).To(BeNumerically(">", 100), "VMID 100 is recorded by machine w-1")
}
