//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"
	"sigs.k8s.io/cluster-api/test/framework"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machine"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab/talossim"
)

// Day two on the lab (docs/lifecycle.md): one lab and one default-flavor cluster (3 control
// planes, 2 workers) shared by every spec, in order: workers scale 2 -> 4 -> 1 -> 2, a worker
// and a Proxmox node are lost and the MachineHealthCheck replaces the worker, a control plane
// is lost and replaced with its etcd member, the cluster is paused and resumed, and deleted.
// Run alone with -ginkgo.focus=Lifecycle (or -ginkgo.label-filter=lifecycle).
// handoverAfter is the lab manager's --node-loss-handover-after (default 5m).
const handoverAfter = 20 * time.Second

var _ = Describe("Lifecycle of the default flavor on the lab", Ordered, Label("lifecycle"), func() {
	var (
		l         *lab.Lab
		proxy     framework.ClusterProxy
		cluster   *clusterv1.Cluster
		sim       *talossim.Sim
		artifacts string
		watch     = &secretWatch{}
		ctx       = context.Background()
		spec      time.Time
	)

	BeforeAll(func() {
		artifacts = os.Getenv("ARTIFACTS")
		if artifacts == "" {
			artifacts = filepath.Join(testenv.RepoRoot(), "_artifacts", "e2e-"+time.Now().Format("20060102-150405"))
		}
		artifacts = filepath.Join(artifacts, "lifecycle")
		GinkgoWriter.Printf("artifacts: %s\n", artifacts)
		startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		var err error
		start := time.Now()
		l, err = lab.Start(startCtx, lab.Options{
			ArtifactsDir: artifacts, NodeSim: lab.TalosNodeSim, SkipApply: true,
			// Short enough for the spec, long enough that a node that blinks is waited for.
			ProviderArgs: []string{"--node-loss-handover-after=" + handoverAfter.String()},
			Logf:         func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
		})
		DeferCleanup(func() {
			if l == nil {
				return
			}
			l.Stop()
			Expect(l.Leftovers()).To(BeEmpty(), "lab processes or listeners still running after Stop")
			AddReportEntry("artifacts", artifacts)
		})
		Expect(err).NotTo(HaveOccurred())
		sim = l.Nodes.(*talossim.Sim)
		proxy = framework.NewClusterProxy("lifecycle", l.Mgmt.Kubeconfig, lab.Scheme())
		DeferCleanup(func() { proxy.Dispose(ctx) })
		AddReportEntry("lab start", time.Since(start).Round(time.Second).String())
	})

	BeforeEach(func() { spec = time.Now() })
	AfterEach(func() {
		AddReportEntry("duration", fmt.Sprintf("%s: %s", CurrentSpecReport().LeafNodeText, time.Since(spec).Round(time.Second)))
	})

	It("creates the default-flavor cluster with its MachineHealthChecks", func() {
		Expect(l.EnsureCredentials(ctx)).To(Succeed())
		for _, cm := range addonConfigMaps(l.ClusterName, l.Namespace) {
			Expect(l.Mgmt.Client.Create(ctx, cm)).To(Succeed(), "ConfigMap %s", cm.Name)
		}
		applyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		Expect(l.ApplyCluster(applyCtx)).To(Succeed())
		cancel()
		cluster = framework.DiscoveryAndWaitForCluster(ctx, framework.DiscoveryAndWaitForClusterInput{
			Getter: proxy.GetClient(), Namespace: l.Namespace, Name: l.ClusterName,
		}, "3m", "2s")
		st := waitAvailable(ctx, l, 10*time.Minute)
		Expect(st.CPReady).To(Equal(l.ControlPlanes))
		Expect(st.WReady).To(Equal(l.Workers))
		mhcs := framework.GetMachineHealthChecksForCluster(ctx, framework.GetMachineHealthChecksForClusterInput{
			Lister: proxy.GetClient(), ClusterName: l.ClusterName, Namespace: l.Namespace,
		})
		Expect(mhcs).To(HaveLen(2))
	})

	It("scales the workers 2 -> 4 -> 1 -> 2: spread over the Proxmox nodes, pool addresses, removed VMs and ISOs gone, freed addresses reused", func() {
		scaleWorkers(ctx, l, proxy, cluster, 4)
		four := workers(ctx, l)
		Expect(four).To(HaveLen(4))
		nodes := map[string]bool{}
		addrs := map[string]bool{}
		for _, m := range four {
			nodes[m.pveNode] = true
			addrs[m.address] = true
			Expect(inWorkerPool(m.address)).To(BeTrue(), "worker %s address %s", m.name, m.address)
		}
		Expect(addrs).To(HaveLen(4), "every worker has its own address")
		Expect(nodes).To(HaveLen(len(l.PVE.Nodes())), "4 workers spread over every Proxmox node")
		GinkgoWriter.Printf("4 workers: %s\n", describeMachines(four))

		scaleWorkers(ctx, l, proxy, cluster, 1)
		one := workers(ctx, l)
		Expect(one).To(HaveLen(1))
		var freed []string
		for _, m := range four {
			if m.name == one[0].name {
				continue
			}
			freed = append(freed, m.address)
			expectVMGone(l, m)
		}
		expectAddressesFree(ctx, l, freed)
		expectNoZombie(ctx, l)

		scaleWorkers(ctx, l, proxy, cluster, 2)
		two := workers(ctx, l)
		Expect(two).To(HaveLen(2))
		for _, m := range two {
			if m.name != one[0].name {
				Expect(freed).To(ContainElement(m.address), "the new worker takes an address the scale-down released")
			}
		}
		AddReportEntry("scale", fmt.Sprintf("4 workers on %d Proxmox nodes; after 1 -> 2 the new worker took %s, freed by the scale-down", len(nodes), addressesExcept(two, one[0].name)))
	})

	It("replaces a worker whose VM powered off: Node unready, MachineHealthCheck remediation, replacement joins, old VM gone", func() {
		before := workers(ctx, l)
		Expect(before).To(HaveLen(2))
		victim := before[0]
		lost := time.Now()
		Expect(l.PVE.GuestPowerOff(victim.vmid)).To(Succeed())
		GinkgoWriter.Printf("powered off VM %d (%s) of worker %s\n", victim.vmid, victim.pveNode, victim.name)
		wl := workloadClient(ctx, l)
		waitNodeReady(ctx, wl, victim.nodeName, corev1.ConditionUnknown, 2*time.Minute)
		unready := time.Since(lost)
		replacement := waitReplaced(ctx, l, victim, before, l.Workers, 5*time.Minute)
		expectVMGone(l, victim)
		// Released: held by no machine but, possibly, the replacement (the first free address).
		expectAddressesFree(ctx, l, []string{victim.address}, replacement.name)
		expectNoZombie(ctx, l)
		AddReportEntry("worker remediation", fmt.Sprintf("Node %s Unknown %s after the power-off; old VM %d gone and replacement %s (address %s; the old one was %s) Available after %s",
			victim.nodeName, unready.Round(time.Second), victim.vmid, replacement.name, replacement.address, victim.address, time.Since(lost).Round(time.Second)))
	})

	// Cluster API replaces a remediated MachineSet machine only once its deletion completed
	// (machines being deleted count as replicas, cluster-api#3434), and the provider never
	// forgets a VM it cannot reach. The lab's manager hands such a deletion over after
	// handoverAfter (--node-loss-handover-after): a successor ProxmoxTalosMachine keeps the
	// VM and its address, the Machine goes, and the replacement joins while the node is down.
	It("replaces a worker whose Proxmox node went offline: the deletion is handed over, the replacement joins while the node is down; back, the old VM is destroyed, never adopted", func() {
		before := workers(ctx, l)
		Expect(before).To(HaveLen(2))
		victim := before[0]
		down := victim.pveNode
		lost := time.Now()
		l.PVE.SetNodeOnline(down, false)
		GinkgoWriter.Printf("Proxmox node %s offline with worker %s (VM %d)\n", down, victim.name, victim.vmid)
		back := false
		defer func() {
			if !back {
				l.PVE.SetNodeOnline(down, true)
			}
		}()
		wl := workloadClient(ctx, l)
		waitNodeReady(ctx, wl, victim.nodeName, corev1.ConditionUnknown, 2*time.Minute)

		// Remediation started and, the node staying offline, the deletion was handed over:
		// the successor holds the VM's identity and waits for the node.
		succKey := client.ObjectKey{Namespace: l.Namespace, Name: machine.SuccessorName(victim.ptmName)}
		Eventually(func(g Gomega) {
			succ := &infrav1.ProxmoxTalosMachine{}
			g.Expect(l.Mgmt.Client.Get(ctx, succKey, succ)).To(Succeed(), "successor of %s", victim.ptmName)
			g.Expect(succ.DeletionTimestamp.IsZero()).To(BeFalse())
			g.Expect(succ.Annotations).To(HaveKeyWithValue(infrav1.HandedOverFromAnnotation, victim.ptmName))
			g.Expect(int(ptr.Deref(succ.Spec.VMID, 0))).To(Equal(victim.vmid))
			c := meta.FindStatusCondition(succ.Status.Conditions, infrav1.VMProvisionedCondition)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(infrav1.NodeOfflineReason))
			g.Expect(c.Message).To(ContainSubstring(down))
			GinkgoWriter.Printf("VMProvisioned of %s: %s: %s\n", succ.Name, c.Reason, c.Message)
		}, 3*time.Minute, 2*time.Second).Should(Succeed())
		handedOver := time.Since(lost)
		_, stillThere := l.PVE.VM(victim.vmid)
		Expect(stillThere).To(BeTrue(), "the VM on the offline node is not forgotten")

		// Replaced while the node is down, on a node that answers, with another address: the
		// old VM's address stays reserved, it would come back with it.
		replacement := waitReplaced(ctx, l, victim, before, l.Workers, 5*time.Minute)
		replaced := time.Since(lost)
		Expect(replacement.pveNode).NotTo(Equal(down))
		Expect(replacement.address).NotTo(Equal(victim.address), "the offline VM's address is still reserved")
		expectAddressReserved(ctx, l, victim.address, true)
		_, stillThere = l.PVE.VM(victim.vmid)
		Expect(stillThere).To(BeTrue())

		// The node returns: the successor destroys the old VM with its disks and boot ISO,
		// releases the address and goes.
		l.PVE.SetNodeOnline(down, true)
		back = true
		backAt := time.Now()
		expectVMGone(l, victim)
		Eventually(func(g Gomega) {
			err := l.Mgmt.Client.Get(ctx, succKey, &infrav1.ProxmoxTalosMachine{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "successor still there: %v", err)
		}, 2*time.Minute, time.Second).Should(Succeed())
		cleaned := time.Since(backAt)
		expectAddressReserved(ctx, l, victim.address, false)
		// No zombie: the old VM does not come back, no machine takes it over, no stale Node.
		Consistently(func(g Gomega) {
			_, ok := l.PVE.VM(victim.vmid)
			g.Expect(ok).To(BeFalse())
		}, 10*time.Second, time.Second).Should(Succeed())
		expectNoZombie(ctx, l)
		waitAllNodesReady(ctx, wl, 2*time.Minute)
		AddReportEntry("node loss", fmt.Sprintf("node %s offline: worker %s handed over after %s, replacement %s on %s (address %s) Available after %s with the node still down; node back: old VM %d destroyed and address %s released after %s",
			down, victim.name, handedOver.Round(time.Second), replacement.name, replacement.pveNode, replacement.address, replaced.Round(time.Second),
			victim.vmid, victim.address, cleaned.Round(time.Second)))
	})

	It("replaces a lost control plane: the MachineHealthCheck marks it, deleting its Machine brings a replacement and etcd drops the old member", func() {
		cps := controlPlanes(ctx, l)
		Expect(cps).To(HaveLen(l.ControlPlanes))
		victim := cps[len(cps)-1]
		Expect(sim.EtcdMembers(l.ClusterName)).To(ContainElement(victim.nodeName))
		lost := time.Now()
		Expect(l.PVE.GuestPowerOff(victim.vmid)).To(Succeed())
		GinkgoWriter.Printf("powered off VM %d of control plane %s\n", victim.vmid, victim.name)
		wl := workloadClient(ctx, l)
		waitNodeReady(ctx, wl, victim.nodeName, corev1.ConditionUnknown, 2*time.Minute)
		// TalosControlPlane does not remediate (CACPPT v0.5): the check marks the Machine and
		// the operator deletes it (docs/lifecycle.md).
		Eventually(func(g Gomega) {
			m := &clusterv1.Machine{}
			g.Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: victim.name}, m)).To(Succeed())
			g.Expect(meta.IsStatusConditionFalse(m.Status.Conditions, clusterv1.MachineHealthCheckSucceededCondition)).To(BeTrue(), "HealthCheckSucceeded")
			g.Expect(meta.FindStatusCondition(m.Status.Conditions, clusterv1.MachineOwnerRemediatedCondition)).NotTo(BeNil(), "OwnerRemediated")
		}, 2*time.Minute, 2*time.Second).Should(Succeed())
		Expect(sim.EtcdMembers(l.ClusterName)).To(ContainElement(victim.nodeName), "a member that is down stays a member until removed")
		m := &clusterv1.Machine{}
		m.Namespace, m.Name = l.Namespace, victim.name
		Expect(l.Mgmt.Client.Delete(ctx, m)).To(Succeed())

		replacement := waitReplaced(ctx, l, victim, cps, l.ControlPlanes, 8*time.Minute)
		expectVMGone(l, victim)
		Eventually(func() []string { return sim.EtcdMembers(l.ClusterName) }, 3*time.Minute, 2*time.Second).Should(
			Equal(sortedNodeNames(controlPlanes(ctx, l))), "etcd members are exactly the control planes")
		Expect(sim.EtcdMembers(l.ClusterName)).To(ContainElement(replacement.nodeName))
		Expect(sim.EtcdMembers(l.ClusterName)).NotTo(ContainElement(victim.nodeName))
		expectNoZombie(ctx, l)
		AddReportEntry("control-plane replacement", fmt.Sprintf("%s lost, replaced by %s at %s; etcd members %v after %s",
			victim.name, replacement.name, replacement.address, sim.EtcdMembers(l.ClusterName), time.Since(lost).Round(time.Second)))
	})

	It("pauses the cluster: no Proxmox call while paused, then resumes and scales", func() {
		const window = 20 * time.Second
		// Touching the machines makes every controller reconcile them: unpaused, that is
		// Proxmox calls; paused, it must be none.
		touch := func(round string) {
			ptms := &infrav1.ProxmoxTalosMachineList{}
			Expect(l.Mgmt.Client.List(ctx, ptms, client.InNamespace(l.Namespace))).To(Succeed())
			for i := range ptms.Items {
				p := &ptms.Items[i]
				patch := client.MergeFrom(p.DeepCopy())
				metav1.SetMetaDataAnnotation(&p.ObjectMeta, "lab.proxmox-talos/touched", round)
				Expect(l.Mgmt.Client.Patch(ctx, p, patch)).To(Succeed())
			}
		}
		// A Running machine's pass reads only the shared /cluster/resources snapshot, and
		// only when it is older than 10 s (StatusMaxAge): two rounds of touches 11 s apart
		// make at least one Proxmox call unless the controllers are paused.
		const apart = 11 * time.Second
		calls := func(d time.Duration, round string) int {
			before := l.PVECalls()
			touch(round + "-1")
			time.Sleep(apart)
			touch(round + "-2")
			time.Sleep(d - apart)
			return l.PVECalls() - before
		}
		unpaused := calls(apart+2*time.Second, "unpaused")
		Expect(unpaused).To(BeNumerically(">", 0), "reconciles that call Proxmox when not paused")

		setPaused(ctx, l, true)
		Eventually(func(g Gomega) {
			ptms := &infrav1.ProxmoxTalosMachineList{}
			g.Expect(l.Mgmt.Client.List(ctx, ptms, client.InNamespace(l.Namespace))).To(Succeed())
			for _, p := range ptms.Items {
				g.Expect(meta.IsStatusConditionTrue(p.Status.Conditions, infrav1.PausedCondition)).To(BeTrue(), "%s Paused", p.Name)
			}
			ptc := &infrav1.ProxmoxTalosCluster{}
			g.Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: l.ClusterName}, ptc)).To(Succeed())
			g.Expect(meta.IsStatusConditionTrue(ptc.Status.Conditions, infrav1.PausedCondition)).To(BeTrue(), "ProxmoxTalosCluster Paused")
		}, time.Minute, time.Second).Should(Succeed())
		// A scale-up asked for while paused must not start either.
		md := workerDeployment(ctx, l)
		mdPatch := client.MergeFrom(md.DeepCopy())
		md.Spec.Replicas = ptrTo(int32(l.Workers + 1))
		Expect(l.Mgmt.Client.Patch(ctx, md, mdPatch)).To(Succeed())
		stats := l.PVE.Stats().Calls
		paused := calls(window, "paused")
		Expect(paused).To(Equal(0), "Proxmox calls while paused: %s", callsDiff(stats, l.PVE.Stats().Calls))
		Expect(workers(ctx, l)).To(HaveLen(l.Workers), "no machine created while paused")

		setPaused(ctx, l, false)
		resumed := time.Now()
		l.Workers++
		Eventually(func(g Gomega) {
			ws := workers(ctx, l)
			g.Expect(ws).To(HaveLen(l.Workers))
			for _, w := range ws {
				g.Expect(w.available).To(BeTrue(), "worker %s", w.name)
			}
		}, 5*time.Minute, 3*time.Second).Should(Succeed())
		expectNoZombie(ctx, l)
		AddReportEntry("pause", fmt.Sprintf("%d Proxmox calls in %s unpaused, 0 in %s paused (the same touches); the scale-up asked for while paused done %s after resume",
			unpaused, apart+2*time.Second, window, time.Since(resumed).Round(time.Second)))
	})

	It("deletes the Cluster and leaves Proxmox empty", func() {
		if cluster == nil {
			cluster = &clusterv1.Cluster{}
			cluster.Namespace, cluster.Name = l.Namespace, l.ClusterName
		}
		deleteAndCheckEmpty(ctx, l, proxy, cluster, artifacts, watch)
	})

	It("leaves no secret (Proxmox token, bootstrap data, Talos PKI keys, Tailscale key) in any log, event or status", func() {
		watch.scanAll(ctx, artifacts, l.Mgmt.Client)
	})
})

// machineInfo is one Machine with what the specs check about it.
type machineInfo struct {
	name, nodeName string
	ptmName        string
	controlPlane   bool
	available      bool
	deleting       bool
	vmid           int
	pveNode        string
	address        string // without prefix length
	volumes        []string
	// bootISO is the volume id the machine's boot ISO has (or had: it is deleted once the
	// Node is Ready).
	bootISO string
}

// clusterMachines reads the lab cluster's Machines with their ProxmoxTalosMachines, by name.
func clusterMachines(ctx context.Context, l *lab.Lab) []machineInfo {
	GinkgoHelper()
	machines := &clusterv1.MachineList{}
	Expect(l.Mgmt.Client.List(ctx, machines, client.InNamespace(l.Namespace),
		client.MatchingLabels{clusterv1.ClusterNameLabel: l.ClusterName})).To(Succeed())
	ptms := &infrav1.ProxmoxTalosMachineList{}
	Expect(l.Mgmt.Client.List(ctx, ptms, client.InNamespace(l.Namespace))).To(Succeed())
	byName := map[string]*infrav1.ProxmoxTalosMachine{}
	for i := range ptms.Items {
		byName[ptms.Items[i].Name] = &ptms.Items[i]
	}
	var out []machineInfo
	for _, m := range machines.Items {
		_, cp := m.Labels[clusterv1.MachineControlPlaneLabel]
		mi := machineInfo{name: m.Name, controlPlane: cp, deleting: !m.DeletionTimestamp.IsZero(),
			available: meta.IsStatusConditionTrue(m.Status.Conditions, clusterv1.MachineAvailableCondition)}
		if m.Status.NodeRef.IsDefined() {
			mi.nodeName = m.Status.NodeRef.Name
		}
		if p := byName[m.Spec.InfrastructureRef.Name]; p != nil {
			mi.ptmName = p.Name
			if p.Spec.VMID != nil {
				mi.vmid = int(*p.Spec.VMID)
			}
			mi.pveNode = p.Spec.Node
			for _, a := range p.Spec.IPAddresses {
				mi.address, _, _ = strings.Cut(a.Address, "/")
			}
			for _, v := range p.Spec.OwnedVolumes {
				mi.volumes = append(mi.volumes, v.VolID)
			}
			if p.Spec.SMBIOSUUID != "" {
				name, err := imagefactory.ISOName(imagefactory.ISOKindCIData, p.Namespace, p.Name, p.Spec.SMBIOSUUID)
				Expect(err).NotTo(HaveOccurred())
				mi.bootISO = "local:iso/" + name
			}
		}
		out = append(out, mi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// workers lists the worker Machines not being deleted.
func workers(ctx context.Context, l *lab.Lab) []machineInfo {
	GinkgoHelper()
	var out []machineInfo
	for _, m := range clusterMachines(ctx, l) {
		if !m.controlPlane && !m.deleting {
			out = append(out, m)
		}
	}
	return out
}

// controlPlanes lists the control-plane Machines not being deleted.
func controlPlanes(ctx context.Context, l *lab.Lab) []machineInfo {
	GinkgoHelper()
	var out []machineInfo
	for _, m := range clusterMachines(ctx, l) {
		if m.controlPlane && !m.deleting {
			out = append(out, m)
		}
	}
	return out
}

func machineByName(ctx context.Context, l *lab.Lab, name string) *machineInfo {
	GinkgoHelper()
	for _, m := range clusterMachines(ctx, l) {
		if m.name == name {
			return &m
		}
	}
	return nil
}

func sortedNodeNames(ms []machineInfo) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.nodeName)
	}
	sort.Strings(out)
	return out
}

func describeMachines(ms []machineInfo) string {
	var parts []string
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s VM %d on %s at %s", m.name, m.vmid, m.pveNode, m.address))
	}
	return strings.Join(parts, "; ")
}

func addressesExcept(ms []machineInfo, name string) string {
	var out []string
	for _, m := range ms {
		if m.name != name {
			out = append(out, m.address)
		}
	}
	return strings.Join(out, ",")
}

// inWorkerPool: 127.10.2.1-127.10.2.6 (lab.WorkerIPs).
func inWorkerPool(addr string) bool {
	for i := 1; i <= 6; i++ {
		if addr == fmt.Sprintf("127.10.2.%d", i) {
			return true
		}
	}
	return false
}

// scaleWorkers scales the MachineDeployment with Cluster API's own helper (every Machine of
// the new MachineSet size gets a Node), then waits until every worker is Available.
func scaleWorkers(ctx context.Context, l *lab.Lab, proxy framework.ClusterProxy, cluster *clusterv1.Cluster, n int) {
	GinkgoHelper()
	start := time.Now()
	framework.ScaleAndWaitMachineDeployment(ctx, framework.ScaleAndWaitMachineDeploymentInput{
		ClusterProxy: proxy, Cluster: cluster, MachineDeployment: workerDeployment(ctx, l),
		Replicas: int32(n), WaitForMachineDeployments: []any{"5m", "3s"},
	})
	l.Workers = n
	Eventually(func(g Gomega) {
		ws := workers(ctx, l)
		g.Expect(ws).To(HaveLen(n))
		for _, w := range ws {
			g.Expect(w.available).To(BeTrue(), "worker %s Available", w.name)
		}
		g.Expect(clusterMachines(ctx, l)).To(HaveLen(l.ControlPlanes+n), "machines being deleted")
	}, 3*time.Minute, 2*time.Second).Should(Succeed())
	GinkgoWriter.Printf("workers scaled to %d in %s\n", n, time.Since(start).Round(time.Second))
}

// waitReplaced waits until the Machine of victim is gone and want Machines of its kind are
// Available, one of them not in before; it returns that replacement.
func waitReplaced(ctx context.Context, l *lab.Lab, victim machineInfo, before []machineInfo, want int, timeout time.Duration) machineInfo {
	GinkgoHelper()
	var fresh machineInfo
	last := ""
	start := time.Now()
	Eventually(func(g Gomega) {
		all := clusterMachines(ctx, l)
		if line := describeState(all); line != last {
			GinkgoWriter.Printf("%s %s\n", time.Since(start).Round(time.Second), line)
			last = line
		}
		var same []machineInfo
		fresh = machineInfo{}
		for _, m := range all {
			g.Expect(m.name).NotTo(Equal(victim.name), "old Machine still there")
			if m.controlPlane != victim.controlPlane {
				continue
			}
			same = append(same, m)
			if !slices.ContainsFunc(before, func(b machineInfo) bool { return b.name == m.name }) {
				fresh = m
			}
		}
		g.Expect(same).To(HaveLen(want))
		for _, m := range same {
			g.Expect(m.available).To(BeTrue(), "Machine %s Available", m.name)
		}
		g.Expect(fresh.name).NotTo(BeEmpty(), "no replacement Machine")
	}, timeout, 3*time.Second).Should(Succeed())
	return fresh
}

func describeState(ms []machineInfo) string {
	var parts []string
	for _, m := range ms {
		s := m.name
		switch {
		case m.deleting:
			s += "(deleting)"
		case m.available:
			s += "(available)"
		default:
			s += "(pending)"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// expectVMGone: the machine's VM, its disks, its boot ISO and every volume it recorded are
// gone.
func expectVMGone(l *lab.Lab, m machineInfo) {
	GinkgoHelper()
	Expect(m.vmid).NotTo(BeZero(), "machine %s had no VM recorded", m.name)
	Eventually(func(g Gomega) {
		_, ok := l.PVE.VM(m.vmid)
		g.Expect(ok).To(BeFalse(), "VM %d of %s", m.vmid, m.name)
		inv := l.PVE.Inventory()
		for _, v := range inv.Volumes {
			g.Expect(m.volumes).NotTo(ContainElement(v.VolID), "volume of %s", m.name)
			g.Expect(v.VolID).NotTo(Equal(m.bootISO), "boot ISO of %s", m.name)
			g.Expect(v.VMID).NotTo(Equal(m.vmid), "disk %s of VM %d", v.VolID, m.vmid)
		}
	}, time.Minute, time.Second).Should(Succeed())
	Expect(m.bootISO).NotTo(BeEmpty(), "machine %s has no identity", m.name)
}

// expectAddressesFree: no ProxmoxTalosMachine holds the addresses any more, except the
// machines named in reusedBy, which may have taken them again.
func expectAddressesFree(ctx context.Context, l *lab.Lab, addrs []string, reusedBy ...string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		for _, m := range clusterMachines(ctx, l) {
			if slices.Contains(reusedBy, m.name) {
				continue
			}
			g.Expect(addrs).NotTo(ContainElement(m.address), "address still held by %s", m.name)
		}
	}, time.Minute, time.Second).Should(Succeed())
}

// expectAddressReserved: an IPAddress of the lab's namespace holds addr (or none does).
func expectAddressReserved(ctx context.Context, l *lab.Lab, addr string, reserved bool) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		list := &ipamv1.IPAddressList{}
		g.Expect(l.Mgmt.Client.List(ctx, list, client.InNamespace(l.Namespace))).To(Succeed())
		var holders []string
		for _, a := range list.Items {
			if a.Spec.Address == addr {
				holders = append(holders, a.Name+" (claim "+a.Spec.ClaimRef.Name+")")
			}
		}
		if reserved {
			g.Expect(holders).NotTo(BeEmpty(), "address %s is not reserved", addr)
		} else {
			g.Expect(holders).To(BeEmpty(), "address %s still reserved", addr)
		}
	}, time.Minute, time.Second).Should(Succeed())
}

// expectNoZombie: Proxmox holds exactly one VM per Machine, at the VMID the machine recorded,
// and the workload cluster has exactly one Node per Machine.
func expectNoZombie(ctx context.Context, l *lab.Lab) {
	GinkgoHelper()
	wl := workloadClient(ctx, l)
	Eventually(func(g Gomega) {
		ms := clusterMachines(ctx, l)
		var want, nodes []string
		for _, m := range ms {
			g.Expect(m.deleting).To(BeFalse(), "Machine %s still being deleted", m.name)
			want = append(want, fmt.Sprint(m.vmid))
			nodes = append(nodes, m.nodeName)
		}
		var have []string
		for _, vm := range l.PVE.Inventory().VMs {
			have = append(have, fmt.Sprint(vm.VMID))
		}
		sort.Strings(want)
		sort.Strings(have)
		g.Expect(have).To(Equal(want), "VMs in Proxmox vs the machines' VMIDs")
		list := &corev1.NodeList{}
		g.Expect(wl.List(ctx, list)).To(Succeed())
		var got []string
		for _, n := range list.Items {
			got = append(got, n.Name)
		}
		sort.Strings(got)
		sort.Strings(nodes)
		g.Expect(got).To(Equal(nodes), "Nodes in the workload cluster vs the machines' nodeRefs")
	}, 2*time.Minute, 2*time.Second).Should(Succeed())
}

func waitNodeReady(ctx context.Context, wl client.Client, name string, want corev1.ConditionStatus, timeout time.Duration) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		n := &corev1.Node{}
		g.Expect(wl.Get(ctx, client.ObjectKey{Name: name}, n)).To(Succeed())
		var got corev1.ConditionStatus
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				got = c.Status
			}
		}
		g.Expect(got).To(Equal(want), "Node %s Ready", name)
	}, timeout, time.Second).Should(Succeed())
}

func waitAllNodesReady(ctx context.Context, wl client.Client, timeout time.Duration) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		list := &corev1.NodeList{}
		g.Expect(wl.List(ctx, list)).To(Succeed())
		for _, n := range list.Items {
			ready := false
			for _, c := range n.Status.Conditions {
				ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
			}
			g.Expect(ready).To(BeTrue(), "Node %s Ready", n.Name)
		}
	}, timeout, time.Second).Should(Succeed())
}

func setPaused(ctx context.Context, l *lab.Lab, paused bool) {
	GinkgoHelper()
	cl := &clusterv1.Cluster{}
	Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: l.ClusterName}, cl)).To(Succeed())
	patch := client.MergeFrom(cl.DeepCopy())
	cl.Spec.Paused = ptrTo(paused)
	Expect(l.Mgmt.Client.Patch(ctx, cl, patch)).To(Succeed())
}

// callsDiff names the Proxmox routes called between two snapshots of pvesim's counters.
func callsDiff(before, after map[string]int) string {
	var out []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out = append(out, fmt.Sprintf("%s x%d", k, d))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}
