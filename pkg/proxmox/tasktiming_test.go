package proxmox

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// simulatePolls drives taskTimings with tasks that all take d: the first poll comes at the
// learned delay, later ones as waitTask spaces them. It returns the status reads per task
// over the last n tasks and the largest lateness (end seen after the task ended).
func simulatePolls(tt *taskTimings, typ string, d time.Duration, warmup, n int) (float64, time.Duration) {
	polls, late := 0, time.Duration(0)
	for i := range warmup + n {
		age := tt.firstPoll(typ, 250*time.Millisecond)
		count, runningAt := 1, time.Duration(0)
		for age < d {
			runningAt = age
			age += nextPoll(age, time.Hour)
			count++
		}
		tt.observe(typ, runningAt, age, 250*time.Millisecond)
		if i >= warmup {
			polls += count
			late = max(late, age-d)
		}
	}
	return float64(polls) / float64(n), late
}

func TestTaskTimingsLearnWhenToPoll(t *testing.T) {
	for _, tc := range []struct {
		name     string
		duration time.Duration
		// maxPolls per task once learned; without learning a fixed 250 ms first poll
		// and doubling costs 1 poll for tasks under 250 ms, 5 for a 3 s task and 7 for 12 s.
		maxPolls float64
		maxLate  time.Duration
	}{
		{"instant tasks are polled at the floor", time.Millisecond, 1, taskPollFloor},
		{"a 100 ms task", 100 * time.Millisecond, 1.6, 100 * time.Millisecond},
		{"a 3 s import", 3 * time.Second, 1.6, 3 * time.Second},
		{"a 12 s import", 12 * time.Second, 1.6, 12 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			tt := &taskTimings{}
			polls, late := simulatePolls(tt, "qmcreate", tc.duration, 40, 200)
			g.Expect(polls).To(BeNumerically("<=", tc.maxPolls), "status reads per task")
			g.Expect(late).To(BeNumerically("<=", tc.maxLate), "seen ended at most one task duration late")
			g.Expect(tt.firstPoll("qmcreate", 0)).To(BeNumerically(">=", taskPollFloor))
		})
	}
	t.Run("one long task teaches the scale at once", func(t *testing.T) {
		g := NewWithT(t)
		tt := &taskTimings{}
		tt.observe("qmcreate", 4*time.Second, 8*time.Second, 250*time.Millisecond)
		g.Expect(tt.firstPoll("qmcreate", 250*time.Millisecond)).To(Equal(6 * time.Second))
	})
	t.Run("types learn apart and a slow task does not teach a minute", func(t *testing.T) {
		g := NewWithT(t)
		tt := &taskTimings{}
		for range 30 {
			tt.observe("qmstart", 0, time.Millisecond, 250*time.Millisecond)
			tt.observe("qmcreate", 10*time.Minute, 20*time.Minute, 250*time.Millisecond)
		}
		g.Expect(tt.firstPoll("qmstart", 250*time.Millisecond)).To(Equal(taskPollFloor))
		g.Expect(tt.firstPoll("qmcreate", 250*time.Millisecond)).To(Equal(taskPollCeiling))
		g.Expect(tt.firstPoll("qmdestroy", 250*time.Millisecond)).To(Equal(250*time.Millisecond), "nothing learned yet: the configured first poll")
	})
}

// TestWaitTaskLearnsFirstPoll: against pvesim, whose tasks take 150 ms here, the client's
// waits (start, stop) learn to read the task's status about once, and every client of the
// same Proxmox API shares what was learned.
func TestWaitTaskLearnsFirstPoll(t *testing.T) {
	g := NewWithT(t)
	var eps Endpoints
	env := startSim(t, pvesim.Config{Nodes: []pvesim.NodeConfig{{Name: "pve1"}}, TaskDuration: pvesim.Duration(150 * time.Millisecond)},
		func(c *Config) {
			c.Endpoint = eps.For(c.URL, 0)
			c.TaskPollInitial = 10 * time.Millisecond
			c.TaskPollMax = 2 * time.Second
		})
	ctx := context.Background()
	g.Expect(env.sim.AddVolume("local", "pve1", "import", talosImage, fakeQCOW2(1<<30))).Error().NotTo(HaveOccurred())
	spec := simSpec("pve1", "learn", "local:import/"+talosImage)
	spec.VMID = 100
	_, err := env.client.CreateVM(ctx, spec)
	g.Expect(err).NotTo(HaveOccurred())

	// A task is read by its own status or by the cluster's task list (taskboard.go).
	polls := func() int {
		return env.sim.Calls("GET /nodes/{node}/tasks/{upid}/status") + env.sim.Calls("GET /cluster/tasks")
	}
	cycle := func(c *PVEClient) int {
		before := polls()
		g.Expect(c.StartVM(ctx, "pve1", 100)).To(Succeed())
		g.Expect(c.StopVM(ctx, "pve1", 100)).To(Succeed())
		return polls() - before
	}
	first := cycle(env.client)
	for range 8 {
		cycle(env.client)
	}
	other, err := New(env.cfg)
	g.Expect(err).NotTo(HaveOccurred())
	learned := 0
	for range 6 {
		learned += cycle(other)
	}
	t.Logf("status reads for a start and a stop: %d before learning, %.1f after", first, float64(learned)/6)
	g.Expect(first).To(BeNumerically(">=", 4), "from a 10 ms first poll, a 150 ms task is read several times")
	g.Expect(float64(learned)/6).To(BeNumerically("<=", 3.4), "about one read per task once learned")
	g.Expect(other.TaskPollDelay("qmstart")).To(BeNumerically(">=", 100*time.Millisecond))
}
