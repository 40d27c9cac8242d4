package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/bench/harness"
)

// TestLeaderFailover runs two manager processes with leader election. The leader is
// killed (SIGKILL, no Lease release) while VMs are being created; the other replica takes
// the Lease and finishes every machine with exactly one VM each (nothing created twice,
// nothing lost), and teardown leaves nothing on Proxmox.
func TestLeaderFailover(t *testing.T) {
	testenv.RequireAssets(t)
	ctrllog.SetLogger(logr.Discard())
	g := NewWithT(t)
	ctx := context.Background()
	h := &harness.Harness{O: twoManagers(t, harness.Options{
		N: 6, C: 1, Profile: pvesim.ProfileRealistic, LeaderElect: true,
	})}
	defer h.Stop()
	g.Expect(h.Start(ctx)).To(Succeed())

	var leader int
	g.Eventually(func() (int, error) { var err error; leader, err = h.Leader(); return leader, err }, time.Minute, 250*time.Millisecond).
		Should(BeNumerically(">=", 0), "one replica leads")
	t.Logf("leader: %s", h.Mgrs[leader].Name)

	g.Expect(h.CreateCluster(ctx, "lead", 0, infrav1.TalosPlatformNoCloud)).To(Succeed())
	g.Expect(h.MarkInfrastructureProvisioned(ctx, []string{"lead"})).To(Succeed())
	var names []string
	for i := 0; i < h.O.N; i++ {
		rec := &harness.MachineRecord{Name: fmt.Sprintf("lead-m%d", i), Cluster: "lead", Platform: infrav1.TalosPlatformNoCloud}
		g.Expect(h.CreateMachine(ctx, rec, true)).To(Succeed())
		names = append(names, rec.Name)
	}

	// Kill the leader mid-work: some machine has its VMID recorded (its create is under
	// way or done) and some machine is not provisioned yet.
	g.Eventually(func() bool {
		var list infrav1.ProxmoxTalosMachineList
		if err := h.K8s.List(ctx, &list, client.InNamespace(harness.Namespace)); err != nil {
			return false
		}
		withVM, provisioned := 0, 0
		for _, m := range list.Items {
			if m.Spec.VMID != nil {
				withVM++
			}
			if m.Status.Initialization.Provisioned != nil && *m.Status.Initialization.Provisioned {
				provisioned++
			}
		}
		return withVM > 0 && provisioned < len(names)
	}, 2*time.Minute, 50*time.Millisecond).Should(BeTrue())
	h.Mgrs[leader].Stop(true)
	t.Logf("killed %s", h.Mgrs[leader].Name)
	killedAt := time.Now()

	g.Eventually(func() (int, error) { return h.Leader() }, time.Minute, 250*time.Millisecond).
		Should(Equal(1-leader), "the other replica takes over")
	t.Logf("%s leads after %s", h.Mgrs[1-leader].Name, time.Since(killedAt).Round(time.Millisecond))

	g.Expect(h.WaitMachines(ctx, names, "Running", harness.Running)).To(Succeed(), "no lost work")
	clusterOf := map[string]string{}
	for _, n := range names {
		clusterOf[n] = "lead"
	}
	g.Expect(harness.InventoryProblems(h.PVEs[infrav1.TalosPlatformNoCloud], names, clusterOf)).To(BeEmpty(), "exactly one VM per machine")

	g.Expect(h.Teardown(ctx, []string{"lead"})).To(Succeed())
	g.Expect(harness.InventoryProblems(h.PVEs[infrav1.TalosPlatformNoCloud], nil, nil)).To(BeEmpty(), "nothing left on Proxmox")
}

// TestWatchFilterShards runs two manager processes, each with its own --watch-filter (Cluster
// API's watch label): both shards' clusters converge, and with shard b's manager stopped a
// new shard-a machine still converges while a new shard-b machine is left untouched (no
// finalizer, no step) — each manager reconciles only its shard. Shard b's manager then
// comes back and finishes its machine.
func TestWatchFilterShards(t *testing.T) {
	testenv.RequireAssets(t)
	ctrllog.SetLogger(logr.Discard())
	g := NewWithT(t)
	ctx := context.Background()
	h := &harness.Harness{O: twoManagers(t, harness.Options{
		C: 2, Profile: pvesim.ProfileFast,
		ReplicaArgs: [][]string{{"--watch-filter=shard-a"}, {"--watch-filter=shard-b"}},
	}), Labels: map[string]map[string]string{
		"sa": {clusterv1.WatchLabel: "shard-a"},
		"sb": {clusterv1.WatchLabel: "shard-b"},
	}}
	defer h.Stop()
	g.Expect(h.Start(ctx)).To(Succeed())

	for i, c := range []string{"sa", "sb"} {
		g.Expect(h.CreateCluster(ctx, c, i, infrav1.TalosPlatformNoCloud)).To(Succeed())
	}
	g.Expect(h.MarkInfrastructureProvisioned(ctx, []string{"sa", "sb"})).To(Succeed(), "each shard's manager reconciles its cluster")
	newMachine := func(name, cluster string) {
		g.Expect(h.CreateMachine(ctx, &harness.MachineRecord{Name: name, Cluster: cluster, Platform: infrav1.TalosPlatformNoCloud}, true)).To(Succeed())
	}
	newMachine("sa-m0", "sa")
	newMachine("sb-m0", "sb")
	g.Expect(h.WaitMachines(ctx, []string{"sa-m0", "sb-m0"}, "Running", harness.Running)).To(Succeed())

	// Shard b's manager goes away: its new machine must be left alone by shard a's.
	h.Mgrs[1].Stop(false)
	newMachine("sa-m1", "sa")
	newMachine("sb-m1", "sb")
	g.Expect(h.WaitMachines(ctx, []string{"sa-m1"}, "Running", harness.Running)).To(Succeed())
	g.Consistently(func(g Gomega) {
		var m infrav1.ProxmoxTalosMachine
		g.Expect(h.K8s.Get(ctx, client.ObjectKey{Namespace: harness.Namespace, Name: "sb-m1"}, &m)).To(Succeed())
		g.Expect(m.Finalizers).To(BeEmpty(), "shard a's manager touched a shard-b machine")
		g.Expect(m.Status.Step).To(BeEmpty())
	}, 5*time.Second, 250*time.Millisecond).Should(Succeed())

	g.Expect(h.Mgrs[1].Start()).To(Succeed())
	g.Expect(h.WaitMachines(ctx, []string{"sb-m1"}, "Running", harness.Running)).To(Succeed(), "shard b's manager finishes its machine")
	names := []string{"sa-m0", "sa-m1", "sb-m0", "sb-m1"}
	clusterOf := map[string]string{"sa-m0": "sa", "sa-m1": "sa", "sb-m0": "sb", "sb-m1": "sb"}
	g.Expect(harness.InventoryProblems(h.PVEs[infrav1.TalosPlatformNoCloud], names, clusterOf)).To(BeEmpty())
	g.Expect(h.Teardown(ctx, []string{"sa", "sb"})).To(Succeed())
	g.Expect(harness.InventoryProblems(h.PVEs[infrav1.TalosPlatformNoCloud], nil, nil)).To(BeEmpty())
}

// TestNamespaceShards runs two managers restricted to namespaces (--namespace): the one for
// the harness's namespace converges its machine; with it stopped, a new machine there is
// left untouched (no finalizer, no step) by the manager of the other namespace, whose caches
// do not even see it. The first manager then comes back and finishes it.
func TestNamespaceShards(t *testing.T) {
	testenv.RequireAssets(t)
	ctrllog.SetLogger(logr.Discard())
	g := NewWithT(t)
	ctx := context.Background()
	h := &harness.Harness{O: twoManagers(t, harness.Options{
		C: 1, Profile: pvesim.ProfileFast,
		ReplicaArgs: [][]string{{"--namespace=" + harness.Namespace}, {"--namespace=another-team"}},
	})}
	defer h.Stop()
	g.Expect(h.Start(ctx)).To(Succeed())

	g.Expect(h.CreateCluster(ctx, "ns", 0, infrav1.TalosPlatformNoCloud)).To(Succeed())
	g.Expect(h.MarkInfrastructureProvisioned(ctx, []string{"ns"})).To(Succeed(), "the namespace's manager reconciles its cluster")
	newMachine := func(name string) {
		g.Expect(h.CreateMachine(ctx, &harness.MachineRecord{Name: name, Cluster: "ns", Platform: infrav1.TalosPlatformNoCloud}, true)).To(Succeed())
	}
	newMachine("ns-m0")
	g.Expect(h.WaitMachines(ctx, []string{"ns-m0"}, "Running", harness.Running)).To(Succeed())

	// The namespace's manager goes away: the other namespace's manager must not take over.
	h.Mgrs[0].Stop(false)
	newMachine("ns-m1")
	g.Consistently(func(g Gomega) {
		var m infrav1.ProxmoxTalosMachine
		g.Expect(h.K8s.Get(ctx, client.ObjectKey{Namespace: harness.Namespace, Name: "ns-m1"}, &m)).To(Succeed())
		g.Expect(m.Finalizers).To(BeEmpty(), "the manager of another namespace touched this machine")
		g.Expect(m.Status.Step).To(BeEmpty())
	}, 5*time.Second, 250*time.Millisecond).Should(Succeed())

	g.Expect(h.Mgrs[0].Start()).To(Succeed())
	g.Expect(h.WaitMachines(ctx, []string{"ns-m1"}, "Running", harness.Running)).To(Succeed(), "the namespace's manager finishes its machine")
	names := []string{"ns-m0", "ns-m1"}
	clusterOf := map[string]string{"ns-m0": "ns", "ns-m1": "ns"}
	g.Expect(harness.InventoryProblems(h.PVEs[infrav1.TalosPlatformNoCloud], names, clusterOf)).To(BeEmpty())
	g.Expect(h.Teardown(ctx, []string{"ns"})).To(Succeed())
	g.Expect(harness.InventoryProblems(h.PVEs[infrav1.TalosPlatformNoCloud], nil, nil)).To(BeEmpty())
}

// twoManagers completes o for a test of two manager processes: nocloud machines whose
// Nodes boot at the profile's pace, a 1 minute resync, 5 minute bounds, the test's own
// output directory and log.
func twoManagers(t *testing.T, o harness.Options) harness.Options {
	o.Replicas = 2
	o.Platforms = []infrav1.TalosPlatform{infrav1.TalosPlatformNoCloud}
	o.NodeBoot = -1
	o.SyncPeriod = time.Minute
	o.Timeout = 5 * time.Minute
	o.Out = t.TempDir()
	o.Logf = t.Logf
	return o
}
