package proxmox

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// taskReads counts both ways of reading a task: its own status and the cluster's list.
func taskReads(sim *pvesim.Server) int {
	return sim.Calls("GET /nodes/{node}/tasks/{upid}/status") + sim.Calls("GET /cluster/tasks")
}

// TestTaskListAnswersConcurrentTasks: tasks of many VMs followed at the same time are
// answered by shared reads of the cluster's task list, far fewer than one status read per
// task per poll; with the board off (TaskListSpacing < 0) each task is read on its own.
// Whether the tasks run a while (starts of 300 ms) or end at once.
func TestTaskListAnswersConcurrentTasks(t *testing.T) {
	starts := func(env *simEnv, i int) error { return env.client.StartVM(context.Background(), "pve1", 100+i) }
	t.Run("VM starts of 300ms", func(t *testing.T) { testTaskListBatches(t, 12, 300*time.Millisecond, starts) })
	t.Run("VM starts ending at once", func(t *testing.T) { testTaskListBatches(t, 30, time.Microsecond, starts) })
}

func testTaskListBatches(t *testing.T, n int, taskDuration time.Duration, task func(*simEnv, int) error) {
	run := func(spacing time.Duration) (reads, lists int) {
		g := NewWithT(t)
		env := startSim(t, pvesim.Config{Nodes: []pvesim.NodeConfig{{Name: "pve1", Memory: 1 << 40, CPUs: 256}}, TaskDuration: pvesim.Duration(taskDuration)},
			func(c *Config) {
				c.TaskPollInitial = 50 * time.Millisecond
				c.TaskPollMax = 200 * time.Millisecond
				c.TaskListSpacing = spacing
				c.Limits = Limits{MaxInFlight: 64, MaxInFlightPerNode: 64, QPS: -1}
			})
		{
			// A small image: the import's modelled time grows with its virtual size.
			g.Expect(env.sim.AddVolume("local", "pve1", "import", talosImage, fakeQCOW2(1<<20))).Error().NotTo(HaveOccurred())
			// Created one after another by a client reading each task on its own (for the
			// board, quick tasks of many VMs on a node are a burst).
			cfg := env.cfg
			cfg.TaskListSpacing = -1
			creator, err := New(cfg)
			g.Expect(err).NotTo(HaveOccurred())
			for i := range n {
				spec := simSpec("pve1", fmt.Sprintf("b-%d", i), "local:import/"+talosImage)
				spec.VMID = 100 + i
				_, err := creator.CreateVM(context.Background(), spec)
				g.Expect(err).NotTo(HaveOccurred())
			}
			env.sim.ResetStats()
		}
		start := time.Now()
		defer func() { t.Logf("spacing %s: %s", spacing, time.Since(start)) }()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- task(env, i)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			g.Expect(err).NotTo(HaveOccurred())
		}
		return taskReads(env.sim), env.sim.Calls("GET /cluster/tasks")
	}
	alone, _ := run(-1)
	batched, lists := run(0)
	t.Logf("task reads for %d concurrent tasks: %d one by one, %d batched (%d list reads)", n, alone, batched, lists)
	g := NewWithT(t)
	g.Expect(alone).To(BeNumerically(">=", n), "one read per task at least")
	g.Expect(lists).To(BeNumerically(">", 0))
	g.Expect(batched).To(BeNumerically("<=", n/2), "list reads answer many tasks each")
}

// TestTaskListStaleFallsBackToOwnStatus: a task its forking daemon never reaped stays
// "running" in the cluster's list; after listTrustMin the client reads the task's own
// status, which is exact, and the wait ends.
func TestTaskListStaleFallsBackToOwnStatus(t *testing.T) {
	g := NewWithT(t)
	defer func(d time.Duration) { listTrustMin = d }(listTrustMin)
	listTrustMin = 300 * time.Millisecond
	env := startSim(t, pvesim.Config{Nodes: []pvesim.NodeConfig{{Name: "pve1"}}, TaskDuration: pvesim.Duration(20 * time.Millisecond)},
		func(c *Config) { c.TaskPollInitial = 10 * time.Millisecond; c.TaskPollMax = 50 * time.Millisecond })
	env.sim.AddFault(pvesim.Fault{Method: "POST", Path: "/nodes/{node}/storage/{storage}/upload", UnreapedTaskRate: 1})
	start := time.Now()
	_, err := env.client.UploadISO(context.Background(), "pve1", "local", "stale.iso", make([]byte, 2048))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(time.Since(start)).To(BeNumerically("<", 3*time.Second))
	g.Expect(env.sim.InjectedFaults()).To(HaveKeyWithValue(pvesim.FaultUnreapedTask, 1))
	g.Expect(env.sim.Calls("GET /cluster/tasks")).To(BeNumerically(">=", 2), "the list said running")
	g.Expect(env.sim.Calls("GET /nodes/{node}/tasks/{upid}/status")).To(BeNumerically(">=", 1), "then the task itself was asked")
}

// TestTaskListDoesNotDelayAMachineAlone: one machine's tasks, one after another (upload,
// create, resize, start, stop), are read at once, as with their own status reads: the
// spacing applies only when other VMs' tasks are asked about on the node.
func TestTaskListDoesNotDelayAMachineAlone(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{Nodes: []pvesim.NodeConfig{{Name: "pve1"}}, TaskDuration: pvesim.Duration(time.Microsecond)})
	ctx := context.Background()
	g.Expect(env.sim.AddVolume("local", "pve1", "import", talosImage, fakeQCOW2(1<<30))).Error().NotTo(HaveOccurred())
	start := time.Now()
	_, err := env.client.UploadISO(ctx, "pve1", "local", "alone.iso", make([]byte, 2048))
	g.Expect(err).NotTo(HaveOccurred())
	spec := simSpec("pve1", "alone", "local:import/"+talosImage)
	spec.VMID = 100
	_, err = env.client.CreateVM(ctx, spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env.client.ResizeDisk(ctx, "pve1", 100, "scsi0", "2G")).To(Succeed())
	g.Expect(env.client.StartVM(ctx, "pve1", 100)).To(Succeed())
	g.Expect(env.client.StopVM(ctx, "pve1", 100)).To(Succeed())
	took := time.Since(start)
	t.Logf("five tasks of one VM in %s, %d task reads", took, taskReads(env.sim))
	g.Expect(took).To(BeNumerically("<", defaultTaskListSpacing/2), "no task waited for the spacing")
}

// TestCreatesBoundedPerNode: StartCreateVM starts at most MaxTasksPerNode creates per
// node; the next answers ErrNodeBusy without a request (more would only queue on PVE's
// storage lock), and a slot frees once a status read shows a create ended.
func TestCreatesBoundedPerNode(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{Nodes: []pvesim.NodeConfig{{Name: "pve1", Memory: 1 << 40, CPUs: 256}, {Name: "pve2", Memory: 1 << 40, CPUs: 256}},
		TaskDuration: pvesim.Duration(300 * time.Millisecond)},
		func(c *Config) { c.Limits = Limits{MaxInFlight: 8, MaxInFlightPerNode: 4, QPS: -1, MaxTasksPerNode: 2} })
	ctx := context.Background()
	for _, node := range []string{"pve1", "pve2"} {
		g.Expect(env.sim.AddVolume("local", node, "import", talosImage, fakeQCOW2(1<<20))).Error().NotTo(HaveOccurred())
	}
	start := func(node string, vmid int) (string, error) {
		spec := simSpec(node, fmt.Sprintf("c-%d", vmid), "local:import/"+talosImage)
		spec.VMID = vmid
		return env.client.StartCreateVM(ctx, spec)
	}
	first, err := start("pve1", 100)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = start("pve1", 101)
	g.Expect(err).NotTo(HaveOccurred())
	posts := env.sim.Calls("POST /nodes/{node}/qemu")
	_, err = start("pve1", 102)
	g.Expect(err).To(MatchError(ErrNodeBusy))
	g.Expect(err.Error()).To(ContainSubstring("2 creates of this manager are running there"))
	g.Expect(env.sim.Calls("POST /nodes/{node}/qemu")).To(Equal(posts), "nothing sent")
	_, err = start("pve2", 200)
	g.Expect(err).NotTo(HaveOccurred(), "another node has its own slots")

	g.Eventually(func() bool {
		st, err := env.client.TaskStatus(ctx, first)
		return err == nil && !st.Running
	}, 5*time.Second, 50*time.Millisecond).Should(BeTrue())
	_, err = start("pve1", 102)
	g.Expect(err).NotTo(HaveOccurred(), "the ended create freed its slot")
}

// TestTaskListFailureFallsBackToOwnStatus: when the cluster's task list cannot be read
// (here every read answers 500), each task is read by its own status and waits still end.
func TestTaskListFailureFallsBackToOwnStatus(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{Nodes: []pvesim.NodeConfig{{Name: "pve1"}}, TaskDuration: pvesim.Duration(20 * time.Millisecond)},
		func(c *Config) { c.Retry = RetryPolicy{MaxAttempts: 1} })
	env.sim.AddFault(pvesim.Fault{Method: "GET", Path: "/cluster/tasks", ErrorRate: 1})
	_, err := env.client.UploadISO(context.Background(), "pve1", "local", "fallback.iso", make([]byte, 2048))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(env.sim.Calls("GET /cluster/tasks")).To(BeNumerically(">=", 1), "the list was tried")
	g.Expect(env.sim.Calls("GET /nodes/{node}/tasks/{upid}/status")).To(BeNumerically(">=", 1), "then the task itself")
}
