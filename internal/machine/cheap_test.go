package machine

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// TestRunningVMReadCheaply: a machine whose VM was seen running reads nothing from
// Proxmox while it waits for its Node (only the workload cluster can tell that), and once
// Running its passes share one /cluster/resources snapshot instead of reading each VM; a
// VM the snapshot does not show running is read directly and reported, unless it started
// too recently for a snapshot to show it (StatusMaxAge + pvestatd's round).
func TestRunningVMReadCheaply(t *testing.T) {
	for _, tc := range []struct {
		name      string
		nodeReady bool
		stopOne   bool
		// justStarted keeps the VMs' start (VMRunning's transition) at now instead of a
		// minute ago.
		justStarted bool
		// want: calls by route for the second round of passes over three machines.
		want map[string]int
	}{
		{name: "waiting for the Node", nodeReady: false, want: map[string]int{}},
		{name: "running", nodeReady: true, want: map[string]int{"GET /cluster/resources": 1}},
		{name: "one VM stopped behind our back", nodeReady: true, stopOne: true,
			want: map[string]int{"GET /cluster/resources": 1, "GET /nodes/{node}/qemu/{vmid}/status/current": 1}},
		{name: "started too recently for a snapshot", nodeReady: true, stopOne: true, justStarted: true,
			want: map[string]int{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			e := newSimEnv(t, 5*time.Millisecond)
			ctx := context.Background()
			var scopes []*Scope
			for i, vmid := range []int{4900, 4901, 4902} {
				e.createVM("pve1", vmid, "w-0", true, true)
				s := e.scope("pve1", vmid)
				s.PTM.UID = types.UID(string(rune('a' + i)))
				s.PTM.Status.Initialization.Provisioned = ptr.To(true)
				out, err := e.r.startVM(ctx, s)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(out.done).To(BeTrue())
				g.Expect(conditions.IsTrue(s.PTM, infrav1.VMRunningCondition)).To(BeTrue())
				if !tc.justStarted {
					startedAgo(s, time.Minute)
				}
				if tc.nodeReady {
					conditions.Set(s.PTM, metav1.Condition{Type: infrav1.NodeReadyCondition, Status: metav1.ConditionTrue, Reason: infrav1.ReadyReason})
				}
				scopes = append(scopes, s)
			}
			want := map[int]string{4900: "running", 4901: "running", 4902: "running"}
			if tc.stopOne {
				g.Expect(e.pve.StopVM(ctx, "pve1", 4901)).To(Succeed())
				want[4901] = "stopped"
			}
			// The snapshot is pvestatd's: wait for a round that saw every start (and the stop).
			g.Eventually(func() map[int]string {
				vms, _ := e.pve.VMs(ctx)
				got := map[int]string{}
				for _, vm := range vms {
					got[vm.VMID] = vm.Status
				}
				return got
			}).Should(Equal(want))
			before := e.sim.Stats().Calls
			for _, s := range scopes {
				out, err := e.r.startVM(ctx, s)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(out.done).To(BeTrue())
			}
			got := map[string]int{}
			for k, v := range e.sim.Stats().Calls {
				if d := v - before[k]; d > 0 {
					got[k] = d
				}
			}
			g.Expect(got).To(Equal(tc.want))
			if tc.stopOne && !tc.justStarted {
				c := conditions.Get(scopes[1].PTM, infrav1.VMRunningCondition)
				g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
				g.Expect(c.Reason).To(Equal(infrav1.PoweredOffReason))
			}
		})
	}
}

// TestCreateTaskTeachesFirstPoll: the create tasks machines follow teach the Proxmox client
// when such tasks end, so later creates read their task's status about once instead of
// from the configured first poll on. A task resumed after a restart (no exact start known)
// teaches nothing.
func TestCreateTaskTeachesFirstPoll(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 150*time.Millisecond)
	e.r.Timing.Max = 5 * time.Second
	ctx := context.Background()
	img := e.seedImage()
	// A task is read by its own status or by the cluster's task list.
	polls := func() int {
		return e.sim.Calls("GET /nodes/{node}/tasks/{upid}/status") + e.sim.Calls("GET /cluster/tasks")
	}
	initial := e.pve.TaskPollDelay(taskCreate)

	create := func(i int) int {
		s := e.readyToCreate(fmt.Sprintf("w-%d", i), 4800+i, img)
		before := polls()
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, err := e.r.createVM(ctx, s)
			g.Expect(err).NotTo(HaveOccurred())
			if out.done {
				break
			}
			g.Expect(time.Now().Before(deadline)).To(BeTrue(), "not created: %+v", s.PTM.Status.Conditions)
			time.Sleep(out.res.RequeueAfter)
		}
		return polls() - before
	}
	first := create(0)
	for i := 1; i < 6; i++ {
		create(i)
	}
	later := 0
	for i := 6; i < 10; i++ {
		later += create(i)
	}
	t.Logf("create task status reads: %d for the first create, %.1f each later; first poll %s → %s",
		first, float64(later)/4, initial, e.pve.TaskPollDelay(taskCreate))
	g.Expect(e.pve.TaskPollDelay(taskCreate)).To(BeNumerically(">", initial), "a 150 ms task taught a later first poll than the configured one")
	g.Expect(float64(later)/4).To(BeNumerically("<", float64(first)), "fewer reads per create once learned")
	g.Expect(float64(later)/4).To(BeNumerically("<=", 3.5), "about one read each for the create and the resize")
}

// TestBootISOUploadedOnce: the pass after the upload (the VMID allocation ends the first)
// neither renders nor uploads the boot ISO again; and when the ISO is gone before the
// create, the create's "does not exist" makes the machine forget it, so the next pass
// uploads it again instead of failing forever.
func TestBootISOUploadedOnce(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 5*time.Millisecond)
	ctx := context.Background()
	img := e.seedImage()
	s := e.scope("pve1", 4850)
	s.imageVolID = img
	volid, err := BootISOVolID(s)
	g.Expect(err).NotTo(HaveOccurred())
	recordVolume(s, "pve1", volid)
	s.PTM.Status.BootISO = volid
	conditions.Set(s.PTM, metav1.Condition{Type: infrav1.BootISOReadyCondition, Status: metav1.ConditionTrue, Reason: infrav1.ReadyReason})

	before := e.sim.Stats().Calls
	out, err := e.r.buildBootISO(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeTrue())
	g.Expect(e.sim.Stats().Calls).To(Equal(before), "no Proxmox call (and no rendering: this scope has no bootstrap data to render)")

	// The ISO was never there (deleted by hand): the create fails and the record goes.
	e.r.fresh.Store(s.PTM.UID, 4850)
	out, err = e.r.createVM(ctx, s)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeFalse())
	g.Expect(s.PTM.Status.BootISO).To(BeEmpty())
	g.Expect(conditions.IsFalse(s.PTM, infrav1.BootISOReadyCondition)).To(BeTrue())
	g.Expect(e.events()).To(ContainElement(ContainSubstring("BootISOMissing")))
	_, exists := e.vm(4850)
	g.Expect(exists).To(BeFalse())
}

// startedAgo moves the machine's VMRunning transition (its VM's start) d into the past.
func startedAgo(s *Scope, d time.Duration) {
	c := conditions.Get(s.PTM, infrav1.VMRunningCondition)
	c.LastTransitionTime = metav1.NewTime(time.Now().Add(-d))
	conditions.Set(s.PTM, *c)
}

// TestCreateWaitsForANodeSlot: a node runs at most --proxmox-max-tasks-per-node of this
// manager's creates. The next machine on it sends nothing, says why, and creates its VM
// once a create there has been seen ending, instead of queueing on PVE's storage lock.
func TestCreateWaitsForANodeSlot(t *testing.T) {
	g := NewWithT(t)
	// The creates within the limit wait for each other on the storage lock, as on PVE
	// (the fast profile's lock timeout is zero).
	e := newSimEnv(t, 50*time.Millisecond, func(c *pvesim.Config) { c.LockTimeout = pvesim.Duration(5 * time.Second) })
	ctx := context.Background()
	img := e.seedImage()
	limit := e.pve.Limiter().Limits().MaxTasksPerNode
	var scopes []*Scope
	for i := 0; i <= limit; i++ {
		scopes = append(scopes, e.readyToCreate(fmt.Sprintf("slot-%d", i), 4700+i, img))
	}
	const post = "POST /nodes/{node}/qemu"
	for _, s := range scopes[:limit] {
		out, err := e.r.createVM(ctx, s)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out.done).To(BeFalse())
	}
	g.Expect(e.sim.Calls(post)).To(Equal(limit))
	last := scopes[limit]
	out, err := e.r.createVM(ctx, last)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeFalse())
	g.Expect(e.sim.Calls(post)).To(Equal(limit), "no create sent beyond the limit")
	c := conditionOf(last, infrav1.VMProvisionedCondition)
	g.Expect(c.Reason).To(Equal(infrav1.InProgressReason))
	g.Expect(c.Message).To(ContainSubstring("Waiting for one of the VM creates running on node pve1 to end"))

	done := map[int]bool{}
	deadline := time.Now().Add(15 * time.Second)
	for len(done) < len(scopes) && time.Now().Before(deadline) {
		for i, s := range scopes {
			if done[i] {
				continue
			}
			out, err := e.r.createVM(ctx, s)
			g.Expect(err).NotTo(HaveOccurred())
			if out.done {
				done[i] = true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.Expect(done).To(HaveLen(len(scopes)), "every machine got its VM")
	g.Expect(e.sim.Calls(post)).To(Equal(limit+1), "one create per machine")
	for _, task := range e.sim.Tasks() {
		if task.Type == "qmcreate" {
			g.Expect(task.ExitStatus).To(Equal("OK"))
		}
	}
}

// A machine whose create failed (PVE removes the failed create's config) looks at its VMID
// once; while it then waits for a create slot it does not look again on every pass.
func TestWaitForASlotAfterAFailedCreateLooksOnce(t *testing.T) {
	g := NewWithT(t)
	e := newSimEnv(t, 200*time.Millisecond, func(c *pvesim.Config) { c.LockTimeout = pvesim.Duration(5 * time.Second) })
	ctx := context.Background()
	img := e.seedImage()
	limit := e.pve.Limiter().Limits().MaxTasksPerNode
	var busy []*Scope
	for i := range limit {
		s := e.readyToCreate(fmt.Sprintf("busy-%d", i), 4800+i, img)
		out, err := e.r.createVM(ctx, s)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out.done).To(BeFalse())
		busy = append(busy, s)
	}
	// After a failed create the VMID is no longer known to be empty.
	failed := e.readyToCreate("failed", 4810, img)
	e.r.fresh.Delete(failed.PTM.UID)
	const config, post = "GET /nodes/{node}/qemu/{vmid}/config", "POST /nodes/{node}/qemu"
	posts := e.sim.Calls(post)
	for range 3 {
		out, err := e.r.createVM(ctx, failed)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(out.done).To(BeFalse())
		g.Expect(conditionOf(failed, infrav1.VMProvisionedCondition).Message).To(ContainSubstring("Waiting for one of the VM creates"))
	}
	g.Expect(e.sim.Calls(config)).To(Equal(1), "one look at the VMID, not one per waiting pass")
	g.Expect(e.sim.Calls(post)).To(Equal(posts), "no create sent beyond the limit")

	// Once a slot frees (a pass following a create sees it end), the create is sent
	// without another look.
	g.Eventually(func(g Gomega) {
		for _, s := range busy {
			_, err := e.r.createVM(ctx, s)
			g.Expect(err).NotTo(HaveOccurred())
		}
		_, err := e.r.createVM(ctx, failed)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(e.sim.Calls(post)).To(Equal(posts + 1))
	}).WithTimeout(10 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
	g.Expect(e.sim.Calls(config)).To(Equal(1))
}

// readyToCreate is a machine on pve1 with its VMID freshly allocated, its boot ISO in
// storage and image img: its next createVM pass sends the create.
func (e *simEnv) readyToCreate(name string, vmid int, img string) *Scope {
	e.t.Helper()
	s := e.scope("pve1", vmid)
	s.PTM.UID = types.UID("uid-" + name)
	s.PTM.Name = name
	s.PTM.Spec.BootDisk.SizeGiB = 1
	s.refreshSpec()
	iso, err := BootISOName(s)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.sim.AddVolume("local", "pve1", "iso", iso, []byte("iso")); err != nil {
		e.t.Fatal(err)
	}
	s.imageVolID = img
	e.r.fresh.Store(s.PTM.UID, vmid)
	return s
}
