// Package chaos runs the provider through a bad day (`make chaos`, docs/reliability.md):
// the real manager binary against a real kube-apiserver and pvesim's realistic profile
// (the scale harness, test/bench/harness), a workload of clusters created, scaled up and
// down, upgraded and deleted, while a seeded fault schedule answers Proxmox calls with
// 5xx, fails tasks, times out locks, answers 596, slows imports, takes a Proxmox node
// offline and SIGKILLs the manager at random moments, also mid-create and mid-delete. At
// the end it asserts: no duplicate VM (by SMBIOS uuid and by tag) at any moment, nothing
// leaked (VMs, disks, ISOs, images, IP addresses and claims), every machine converged,
// every deletion finished, and no secret in any log, event or status.
package chaos

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machine"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/bench/harness"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/secrets"
)

// UpgradeVersion is the Talos version the upgraded cluster rolls out to (factorysim knows it).
const UpgradeVersion = "v1.14.0"

// Options are one chaos run's parameters.
type Options struct {
	Seed int64
	// Machines is the number of machines the workload creates in all (upgrade replacements
	// come on top); Clusters spreads them.
	Machines, Clusters int
	// Duration is the chaos window: kills are spread over it and the workload keeps the
	// clusters under faults at least this long before deleting everything.
	Duration time.Duration
	// Kills is the least number of manager SIGKILLs.
	Kills int
	// DeleteKills is the least number of kills while a VM delete task runs (default 1):
	// deletion is where zombie VMs and delete loops come from.
	DeleteKills int
	// Replicas > 1 runs that many managers with leader election; kills hit the leader.
	Replicas int
	// Fault rates. UnreapedTaskRate: tasks the node's task list keeps showing running
	// after they ended (their forking daemon was recycled), until the next task starts
	// on the node.
	ErrorRate, TaskFailureRate, LockTimeoutRate, ProxyErrorRate, UnreapedTaskRate float64
	// ImportThroughput slows imports (bytes per Proxmox second; realistic default 40 MiB).
	ImportThroughput uint64
	// NodeOffline is how long one Proxmox node stays offline (0: Duration/5).
	NodeOffline time.Duration
	// Timeout bounds each wait for convergence or deletion.
	Timeout    time.Duration
	ManagerBin string
	Out        string
	Logf       func(format string, args ...any)
}

// Defaults are the fault rates.
func (o *Options) defaults() {
	if o.Clusters < 1 {
		o.Clusters = 1
	}
	if o.Replicas < 1 {
		o.Replicas = 1
	}
	if o.DeleteKills < 1 {
		o.DeleteKills = 1
	}
	if o.NodeOffline == 0 {
		o.NodeOffline = max(o.Duration/5, 10*time.Second)
	}
	if o.Timeout == 0 {
		o.Timeout = 15 * time.Minute
	}
	if o.ImportThroughput == 0 {
		o.ImportThroughput = 4 << 20
	}
}

// Kill is one SIGKILL of a manager.
type Kill struct {
	At      float64 `json:"atSeconds"`
	Manager string  `json:"manager"`
	Leader  bool    `json:"leader"`
	// During: what Proxmox was doing: "create" (a qmcreate task running), "delete"
	// (qmdestroy running), "other".
	During string `json:"during"`
	// Survived: the manager came back ready (and, with replicas, some replica led again).
	Survived bool `json:"survived"`
}

// Result is what a run measured and asserts.
type Result struct {
	Seed             int64          `json:"seed"`
	Machines         int            `json:"machinesCreated"`
	Clusters         int            `json:"clusters"`
	Replicas         int            `json:"replicas"`
	Seconds          float64        `json:"seconds"`
	Host             string         `json:"host"`
	Phases           []Phase        `json:"phases"`
	Faults           map[string]int `json:"faultsInjected"`
	ProxmoxCalls     int            `json:"proxmoxCalls"`
	NodeOfflineFor   float64        `json:"nodeOfflineSeconds"`
	Kills            []Kill         `json:"kills"`
	DuplicatesByUUID []string       `json:"duplicatesByUUID"`
	DuplicatesByTag  []string       `json:"duplicatesByTag"`
	Leaks            []string       `json:"leaks"`
	Converged        bool           `json:"converged"`
	DeletionsDone    bool           `json:"deletionsFinished"`
	SecretScan       string         `json:"secretScan"`
	SecretFindings   int            `json:"secretFindings"`
	Problems         []string       `json:"problems"`
}

// Phase is one workload step and how long it took under chaos.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	Live    int     `json:"liveMachines"`
}

func (r *run) kills() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.res.Kills)
}

func (r *Result) killsBy(during string) (n int) {
	for _, k := range r.Kills {
		if k.During == during {
			n++
		}
	}
	return n
}

// KillsSurvived counts kills after which the manager came back.
func (r *Result) KillsSurvived() (n int) {
	for _, k := range r.Kills {
		if k.Survived {
			n++
		}
	}
	return n
}

// run is one chaos run's state.
type run struct {
	o     Options
	h     *harness.Harness
	pve   *pvesim.Server
	rng   *mrand.Rand
	rngMu sync.Mutex
	start time.Time
	res   *Result

	mu        sync.Mutex
	live      map[string]*harness.MachineRecord // machines that should exist
	seq       map[string]int
	dupUUID   map[string]bool
	dupTag    map[string]bool
	needles   []secrets.Needle
	killsDone chan struct{}
}

func (r *run) logf(f string, a ...any) { r.o.Logf(f, a...) }

func (r *run) intn(n int) int {
	r.rngMu.Lock()
	defer r.rngMu.Unlock()
	return r.rng.Intn(n)
}

func (r *run) float() float64 {
	r.rngMu.Lock()
	defer r.rngMu.Unlock()
	return r.rng.Float64()
}

// Run performs one chaos run. The result is returned also when the run fails.
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	res := &Result{Seed: o.Seed, Clusters: o.Clusters, Replicas: o.Replicas, Host: host(), Faults: map[string]int{}}
	if o.Machines < 2*o.Clusters {
		return res, fmt.Errorf("need at least 2 machines per cluster, got %d machines for %d clusters", o.Machines, o.Clusters)
	}
	r := &run{o: o, rng: mrand.New(mrand.NewSource(o.Seed)), res: res, live: map[string]*harness.MachineRecord{},
		seq: map[string]int{}, dupUUID: map[string]bool{}, dupTag: map[string]bool{}, killsDone: make(chan struct{})}
	token := randomUUID()
	r.needles = append(r.needles, secrets.NewNeedle(secrets.KindProxmoxToken, "pvesim token", []byte(token)))
	r.h = &harness.Harness{O: harness.Options{
		Profile:     pvesim.ProfileRealistic,
		Platforms:   []infrav1.TalosPlatform{infrav1.TalosPlatformNoCloud},
		NodeBoot:    -1,
		SyncPeriod:  time.Minute,
		Timeout:     o.Timeout,
		Replicas:    o.Replicas,
		LeaderElect: o.Replicas > 1,
		ManagerBin:  o.ManagerBin,
		Out:         o.Out,
		Logf:        o.Logf,
		PVEConfig: func(c *pvesim.Config) {
			c.Seed = o.Seed
			c.ImportThroughput = o.ImportThroughput
			// A token only this run knows, so that the secret scan can find it.
			c.Tokens = []pvesim.TokenConfig{{ID: pvesim.DefaultTokenID, Secret: token, ACLs: []pvesim.ACLConfig{{Path: "/", Role: "Administrator"}}}}
		},
		BootstrapData: bootstrapData,
		ClusterSpec: func(cluster string, spec *infrav1.ProxmoxTalosClusterSpec) {
			// The Tailscale auth key reaches the VMs as an extra config document.
			spec.ExtraConfig = []infrav1.ExtraConfigSource{{Name: cluster + "-tailscale"}}
		},
	}}
	started := time.Now()
	defer r.h.Stop()
	err := r.run(ctx)
	res.Seconds = time.Since(started).Seconds()
	if r.pve != nil && len(res.Faults) == 0 {
		// A run that stopped early still reports what it injected.
		res.Faults = r.pve.InjectedFaults()
		res.ProxmoxCalls = harness.Total(r.pve.Stats().Calls)
	}
	if err != nil {
		res.Problems = append(res.Problems, err.Error())
	}
	r.mu.Lock()
	res.DuplicatesByUUID = sortedSet(r.dupUUID)
	res.DuplicatesByTag = sortedSet(r.dupTag)
	r.mu.Unlock()
	for _, d := range res.DuplicatesByUUID {
		res.Problems = append(res.Problems, "duplicate VMs with SMBIOS uuid "+d)
	}
	for _, d := range res.DuplicatesByTag {
		res.Problems = append(res.Problems, "duplicate VMs of machine "+d)
	}
	if len(res.Kills) < o.Kills {
		res.Problems = append(res.Problems, fmt.Sprintf("%d kills, want at least %d (a longer DURATION spreads more)", len(res.Kills), o.Kills))
	}
	if len(res.Kills) > 0 && (res.killsBy("create") == 0 || res.killsBy("delete") < o.DeleteKills) && err == nil {
		res.Problems = append(res.Problems, fmt.Sprintf("kills mid-create %d, mid-delete %d: want at least one mid-create and %d mid-delete", res.killsBy("create"), res.killsBy("delete"), o.DeleteKills))
	}
	if s := res.KillsSurvived(); s != len(res.Kills) {
		res.Problems = append(res.Problems, fmt.Sprintf("only %d of %d kills survived", s, len(res.Kills)))
	}
	if len(res.Problems) > 0 {
		return res, errors.New("chaos run failed:\n  " + strings.Join(res.Problems, "\n  "))
	}
	return res, nil
}

func (r *run) run(ctx context.Context) error {
	o, h := r.o, r.h
	if err := h.Start(ctx); err != nil {
		return err
	}
	r.pve = h.PVEs[infrav1.TalosPlatformNoCloud]
	r.start = time.Now()

	// Watchers: duplicates at any moment; kills; the node outage.
	wctx, stopWatchers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopWatchers(); wg.Wait() }()
	wg.Add(1)
	go func() { defer wg.Done(); r.watchDuplicates(wctx) }()

	r.logf("chaos: seed %d, %d machines over %d clusters, %s window, >= %d kills, %d replica(s)", o.Seed, o.Machines, o.Clusters, o.Duration, o.Kills, o.Replicas)
	r.pve.AddFault(pvesim.Fault{ErrorRate: o.ErrorRate, TaskFailureRate: o.TaskFailureRate, LockTimeoutRate: o.LockTimeoutRate,
		ProxyErrorRate: o.ProxyErrorRate, UnreapedTaskRate: o.UnreapedTaskRate})
	wg.Add(2)
	go func() { defer wg.Done(); r.killer(wctx) }()
	go func() { defer wg.Done(); r.nodeOutage(wctx) }()

	// 1. Clusters and the first half of the machines.
	clusters := make([]string, o.Clusters)
	for i := range clusters {
		clusters[i] = fmt.Sprintf("k%02d", i)
		if err := h.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: clusters[i] + "-tailscale"},
			Data:       map[string][]byte{"value": []byte("apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: tailscale\nenvironment:\n  - TS_AUTHKEY=tskey-auth-" + randomHex(12) + "\n")},
		}); err != nil {
			return err
		}
		if err := h.CreateCluster(ctx, clusters[i], i, infrav1.TalosPlatformNoCloud); err != nil {
			return err
		}
	}
	if err := h.MarkInfrastructureProvisioned(ctx, clusters); err != nil {
		return err
	}
	first := o.Machines / 2
	second := o.Machines / 4
	if err := r.phase(ctx, "create", func() error { return r.addMachines(ctx, clusters, first, "") }); err != nil {
		return err
	}
	// 2. Scale up.
	if err := r.phase(ctx, "scale up", func() error { return r.addMachines(ctx, clusters, second, "") }); err != nil {
		return err
	}
	// 3. Upgrade cluster 0 the way a MachineDeployment rollout does (maxSurge 100 %):
	// new machines from a template with the new Talos version, then the old ones deleted.
	if err := r.phase(ctx, "upgrade "+clusters[0], func() error {
		old := r.liveOf(clusters[0])
		if err := r.addTo(ctx, clusters[0], len(old), UpgradeVersion); err != nil {
			return err
		}
		if err := r.waitLive(ctx); err != nil {
			return err
		}
		return r.deleteMachines(ctx, old)
	}); err != nil {
		return err
	}
	// 4. Scale down: one machine less in every other cluster that has two or more.
	if err := r.phase(ctx, "scale down", func() error {
		var victims []string
		for _, c := range clusters[1:] {
			if m := r.liveOf(c); len(m) > 1 {
				victims = append(victims, m[r.intn(len(m))])
			}
		}
		return r.deleteMachines(ctx, victims)
	}); err != nil {
		return err
	}
	// 5. Scale up to the full size.
	if err := r.phase(ctx, "scale up again", func() error {
		return r.addMachines(ctx, clusters, o.Machines-first-second, "")
	}); err != nil {
		return err
	}
	// 6. Steady state under faults until the window is over: kills now hit status reads
	// and the Node checks.
	if err := r.phase(ctx, "steady under faults", func() error {
		if rest := o.Duration - time.Since(r.start); rest > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(rest):
			}
		}
		return nil
	}); err != nil {
		return err
	}
	r.res.Converged = true

	// Statuses are gone after deletion: scan them now.
	pre, err := r.scan(ctx, "")
	if err != nil {
		return err
	}

	// 7. Delete everything, still under faults and kills.
	if err := r.phase(ctx, "delete all", func() error {
		if err := r.deleteMachines(ctx, r.liveNames()); err != nil {
			return err
		}
		for _, c := range clusters {
			if err := client.IgnoreNotFound(h.K8s.Delete(ctx, &infrav1.ProxmoxTalosCluster{ObjectMeta: metav1.ObjectMeta{Namespace: harness.Namespace, Name: c}})); err != nil {
				return err
			}
		}
		return harness.Poll(ctx, o.Timeout, func() (bool, error) {
			var list infrav1.ProxmoxTalosClusterList
			if err := h.K8s.List(ctx, &list, client.InNamespace(harness.Namespace)); err != nil {
				return false, err
			}
			return len(list.Items) == 0, nil
		})
	}); err != nil {
		return err
	}
	r.res.DeletionsDone = true
	// The killer stops with the workload; kills counted so far stand.
	stopWatchers()
	wg.Wait()
	r.pve.ClearFaults()
	r.pve.SetNodeOnline(nodeToFail, true)
	r.res.Faults = r.pve.InjectedFaults()
	r.res.ProxmoxCalls = harness.Total(r.pve.Stats().Calls)

	// Leaks: Proxmox (VMs, disks, ISOs, images) after its tasks settle, and IPAM.
	if err := r.pve.WaitTasks(time.Minute); err != nil {
		r.res.Leaks = append(r.res.Leaks, "pvesim tasks still running: "+err.Error())
	}
	r.res.Leaks = append(r.res.Leaks, harness.InventoryProblems(r.pve, nil, nil)...)
	r.res.Leaks = append(r.res.Leaks, r.ipamLeft(ctx)...)
	for _, l := range r.res.Leaks {
		r.res.Problems = append(r.res.Problems, "leak: "+l)
	}

	post, err := r.scan(ctx, o.Out)
	if err != nil {
		return err
	}
	post.Findings = append(pre.Findings, post.Findings...)
	post.Objects += pre.Objects
	r.res.SecretScan = post.String()
	r.res.SecretFindings = len(post.Findings)
	if len(post.Findings) > 0 {
		r.res.Problems = append(r.res.Problems, post.String())
	}
	return nil
}

// nodeToFail is the node taken offline: not the first, which receives every call.
const nodeToFail = "pve3"

// phase runs one workload step and then requires convergence: every live machine Running
// with exactly one VM, and no address handed out twice.
func (r *run) phase(ctx context.Context, name string, f func() error) error {
	began := time.Now()
	r.logf("phase %q", name)
	if err := f(); err != nil {
		return fmt.Errorf("phase %q: %w", name, err)
	}
	if err := r.waitLive(ctx); err != nil {
		return fmt.Errorf("phase %q: %w", name, err)
	}
	live := r.liveNames()
	clusterOf := map[string]string{}
	r.mu.Lock()
	for n, rec := range r.live {
		clusterOf[n] = rec.Cluster
	}
	r.mu.Unlock()
	for _, p := range harness.InventoryProblems(r.pve, live, clusterOf) {
		r.res.Problems = append(r.res.Problems, fmt.Sprintf("after %s: %s", name, p))
	}
	r.res.Problems = append(r.res.Problems, r.addressProblems(ctx, name)...)
	r.res.Phases = append(r.res.Phases, Phase{Name: name, Seconds: time.Since(began).Seconds(), Live: len(live)})
	r.logf("phase %q done in %s: %d machines Running, %d kills so far, faults %v", name, time.Since(began).Round(time.Second), len(live), r.kills(), r.pve.InjectedFaults())
	return nil
}

func (r *run) waitLive(ctx context.Context) error {
	return r.h.WaitMachines(ctx, r.liveNames(), "Running", harness.Running)
}

func (r *run) liveNames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.live))
	for n := range r.live {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (r *run) liveOf(cluster string) []string {
	var out []string
	for _, n := range r.liveNames() {
		r.mu.Lock()
		c := r.live[n].Cluster
		r.mu.Unlock()
		if c == cluster {
			out = append(out, n)
		}
	}
	return out
}

// addMachines adds n machines round-robin over the clusters.
func (r *run) addMachines(ctx context.Context, clusters []string, n int, version string) error {
	per := map[string]int{}
	for i := 0; i < n; i++ {
		per[clusters[i%len(clusters)]]++
	}
	for _, c := range clusters {
		if err := r.addTo(ctx, c, per[c], version); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) addTo(ctx context.Context, cluster string, n int, version string) error {
	recs := make([]*harness.MachineRecord, n)
	r.mu.Lock()
	for i := range recs {
		recs[i] = &harness.MachineRecord{Name: fmt.Sprintf("%s-m%02d", cluster, r.seq[cluster]), Cluster: cluster, Platform: infrav1.TalosPlatformNoCloud, TalosVersion: version}
		r.seq[cluster]++
		r.live[recs[i].Name] = recs[i]
		r.res.Machines++
	}
	r.mu.Unlock()
	return harness.Parallel(ctx, n, func(i int) error { return r.h.CreateMachine(ctx, recs[i], true) })
}

// deleteMachines deletes machines as Cluster API does: the ProxmoxTalosMachine first
// (the provider deletes the VM and releases the addresses before it lets go), then,
// once it is gone, the Machine and its Node.
func (r *run) deleteMachines(ctx context.Context, names []string) error {
	h := r.h
	if err := harness.Parallel(ctx, len(names), func(i int) error {
		return client.IgnoreNotFound(h.K8s.Delete(ctx, &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: harness.Namespace, Name: names[i]}}))
	}); err != nil {
		return err
	}
	var left []string
	err := harness.Poll(ctx, r.o.Timeout, func() (bool, error) {
		left = left[:0]
		for _, n := range names {
			var p infrav1.ProxmoxTalosMachine
			if err := h.K8s.Get(ctx, client.ObjectKey{Namespace: harness.Namespace, Name: n}, &p); err == nil {
				left = append(left, n)
			} else if !apierrors.IsNotFound(err) {
				return false, err
			}
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%d of %d deletions not finished (%s): %w", len(left), len(names), h.Describe(ctx, left), err)
	}
	for _, n := range names {
		for _, obj := range []client.Object{
			&clusterv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: harness.Namespace, Name: n}},
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}},
		} {
			if err := client.IgnoreNotFound(h.K8s.Delete(ctx, obj)); err != nil {
				return err
			}
		}
		r.mu.Lock()
		delete(r.live, n)
		r.mu.Unlock()
	}
	return nil
}

// watchDuplicates samples pvesim's inventory: two VMs with one SMBIOS uuid, or two VMs
// tagged for one machine, at any moment, are duplicates.
func (r *run) watchDuplicates(ctx context.Context) {
	for {
		uuids, tags := duplicates(r.pve.Inventory())
		r.mu.Lock()
		for _, u := range uuids {
			r.dupUUID[u] = true
		}
		for _, t := range tags {
			r.dupTag[t] = true
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// duplicates returns the SMBIOS uuids and machine tags that more than one VM carries.
func duplicates(inv pvesim.Inventory) (uuids, tags []string) {
	byUUID, byTag := map[string]int{}, map[string]int{}
	for _, vm := range inv.VMs {
		if u := smbiosUUID(vm.Config["smbios1"]); u != "" {
			byUUID[u]++
		}
		for _, t := range vm.Tags {
			if strings.HasPrefix(strings.ToLower(t), machine.MachineTag("")) {
				byTag[strings.ToLower(t)]++
			}
		}
	}
	for u, n := range byUUID {
		if n > 1 {
			uuids = append(uuids, u)
		}
	}
	for t, n := range byTag {
		if n > 1 {
			tags = append(tags, t)
		}
	}
	sort.Strings(uuids)
	sort.Strings(tags)
	return uuids, tags
}

func smbiosUUID(s string) string {
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == "uuid" {
			return strings.ToLower(v)
		}
	}
	return ""
}

// killer SIGKILLs a manager (the leader with replicas) at random moments within the
// window: gaps drawn from the seeded RNG spread o.Kills over o.Duration. Until a kill has
// hit a running create task and o.DeleteKills a running delete task, it also kills as soon
// as one is running.
func (r *run) killer(ctx context.Context) {
	mean := r.o.Duration / time.Duration(max(r.o.Kills, 1))
	next := time.Now().Add(time.Duration((0.2 + 0.8*r.float()) * float64(mean)))
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
		during := r.running()
		// Scheduled kills stop with the window (so that a run's length stays bounded); the
		// targeted ones go on until both a create and a delete were hit.
		due := time.Now().After(next) && time.Since(r.start) < r.o.Duration
		targeted := (during == "create" && r.res.killsBy("create") == 0) || (during == "delete" && r.res.killsBy("delete") < r.o.DeleteKills && len(r.res.Kills) > 0)
		if !due && !targeted {
			continue
		}
		r.kill(ctx, during)
		next = time.Now().Add(time.Duration((0.2 + 0.8*r.float()) * float64(mean)))
	}
}

// running tells what Proxmox is doing: a VM create or delete task running.
func (r *run) running() string {
	create, del := false, false
	for _, t := range r.pve.Tasks() {
		if !t.Running {
			continue
		}
		switch t.Type {
		case "qmcreate":
			create = true
		case "qmdestroy":
			del = true
		}
	}
	switch {
	case create:
		return "create"
	case del:
		return "delete"
	}
	return "other"
}

func (r *run) kill(ctx context.Context, during string) {
	h := r.h
	victim, leader := 0, false
	if len(h.Mgrs) > 1 {
		if l, err := h.Leader(); err == nil && l >= 0 {
			victim, leader = l, true
		} else {
			victim = r.intn(len(h.Mgrs))
		}
	}
	m := h.Mgrs[victim]
	if !m.Alive() {
		return
	}
	k := Kill{At: time.Since(r.start).Seconds(), Manager: m.Name, Leader: leader, During: during}
	m.Stop(true)
	r.logf("SIGKILL %s (leader %v) during %s at %.0fs", m.Name, leader, during, k.At)
	// Down for a moment, as a pod restart.
	down := time.Duration((0.2 + 2.8*r.float()) * float64(time.Second))
	select {
	case <-ctx.Done():
	case <-time.After(down):
	}
	if err := m.Start(); err != nil {
		r.logf("restarting %s: %v", m.Name, err)
	} else {
		// Survived: ready again, and with replicas someone leads.
		err := harness.Poll(context.Background(), 2*time.Minute, func() (bool, error) {
			if !m.Ready() {
				return false, nil
			}
			if len(h.Mgrs) > 1 {
				l, err := h.Leader()
				return err == nil && l >= 0, err
			}
			return true, nil
		})
		k.Survived = err == nil
	}
	r.mu.Lock()
	r.res.Kills = append(r.res.Kills, k)
	r.mu.Unlock()
}

// nodeOutage takes one Proxmox node offline at a random moment in the first half of the
// window, for NodeOffline.
func (r *run) nodeOutage(ctx context.Context) {
	at := time.Duration((0.1 + 0.4*r.float()) * float64(r.o.Duration))
	select {
	case <-ctx.Done():
		return
	case <-time.After(at):
	}
	r.logf("node %s offline for %s", nodeToFail, r.o.NodeOffline)
	began := time.Now()
	r.pve.SetNodeOnline(nodeToFail, false)
	select {
	case <-ctx.Done():
	case <-time.After(r.o.NodeOffline):
	}
	r.pve.SetNodeOnline(nodeToFail, true)
	r.res.NodeOfflineFor = time.Since(began).Seconds()
	r.logf("node %s online again", nodeToFail)
}

// addressProblems: no address handed out twice in a pool.
func (r *run) addressProblems(ctx context.Context, phase string) []string {
	var list ipamv1.IPAddressList
	if err := r.h.K8s.List(ctx, &list, client.InNamespace(harness.Namespace)); err != nil {
		return []string{fmt.Sprintf("after %s: listing IPAddresses: %v", phase, err)}
	}
	seen := map[string]string{}
	var out []string
	for _, a := range list.Items {
		key := a.Spec.PoolRef.Name + "/" + a.Spec.Address
		if other, ok := seen[key]; ok {
			out = append(out, fmt.Sprintf("after %s: address %s held by %s and %s", phase, key, other, a.Name))
		}
		seen[key] = a.Name
	}
	return out
}

// ipamLeft lists the IPAddresses and IPAddressClaims left after everything was deleted.
func (r *run) ipamLeft(ctx context.Context) []string {
	var out []string
	var addrs ipamv1.IPAddressList
	var claims ipamv1.IPAddressClaimList
	if err := r.h.K8s.List(ctx, &addrs, client.InNamespace(harness.Namespace)); err != nil {
		return []string{"listing IPAddresses: " + err.Error()}
	}
	if err := r.h.K8s.List(ctx, &claims, client.InNamespace(harness.Namespace)); err != nil {
		return []string{"listing IPAddressClaims: " + err.Error()}
	}
	for _, a := range addrs.Items {
		out = append(out, fmt.Sprintf("IPAddress %s (%s) left", a.Name, a.Spec.Address))
	}
	for _, c := range claims.Items {
		out = append(out, fmt.Sprintf("IPAddressClaim %s left", c.Name))
	}
	return out
}

// scan looks for secrets in the manager logs under dir (if set), events and statuses.
func (r *run) scan(ctx context.Context, dir string) (secrets.Report, error) {
	// Logs only: the harness's kubeconfig holds envtest's admin key on purpose.
	return secrets.Scan(ctx, r.h.K8s, infrav1.CredentialsTokenSecretKey, dir, secrets.OnlyLogs, secrets.StatusKinds, r.needles...)
}

// bootstrapData is a worker's Talos machine configuration with its own machine token and
// a freshly generated CA key, as CABPT writes: distinctive values the secret scan must
// never find outside the Secret.
func bootstrapData(string) []byte {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	key := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return []byte(fmt.Sprintf("version: v1alpha1\nmachine:\n  type: worker\n  token: %s.%s\n  ca:\n    crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n    key: %s\ncluster:\n  secret: %s\n  token: %s.%s\n",
		randomHex(3), randomHex(8), key, randomHex(16), randomHex(3), randomHex(8)))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomUUID() string {
	h := randomHex(16)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func sortedSet(m map[string]bool) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func host() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%d CPUs (%s), load average %s at start", runtime.NumCPU(), model, load)
}

// WriteTable prints the result as Markdown.
func WriteTable(w io.Writer, r *Result) {
	fmt.Fprintf(w, "\n## chaos: seed %d, %d machines over %d clusters, %d manager replica(s)\n\n", r.Seed, r.Machines, r.Clusters, r.Replicas)
	fmt.Fprintf(w, "host: %s\n\n| figure | value |\n|---|---|\n", r.Host)
	fmt.Fprintf(w, "| duration | %.0f s |\n", r.Seconds)
	fmt.Fprintf(w, "| machines created (upgrade replacements included) | %d |\n", r.Machines)
	fmt.Fprintf(w, "| Proxmox calls | %d |\n", r.ProxmoxCalls)
	for _, k := range sortedMapKeys(r.Faults) {
		fmt.Fprintf(w, "| faults injected: %s | %d |\n", k, r.Faults[k])
	}
	fmt.Fprintf(w, "| Proxmox node %s offline | %.0f s |\n", nodeToFail, r.NodeOfflineFor)
	fmt.Fprintf(w, "| manager SIGKILLs (mid-create / mid-delete / other) | %d (%d / %d / %d) |\n", len(r.Kills), r.killsBy("create"), r.killsBy("delete"), r.killsBy("other"))
	fmt.Fprintf(w, "| kills survived | %d |\n", r.KillsSurvived())
	fmt.Fprintf(w, "| duplicate VMs by SMBIOS uuid / by tag | %d / %d |\n", len(r.DuplicatesByUUID), len(r.DuplicatesByTag))
	fmt.Fprintf(w, "| leaked VMs, disks, ISOs, images, IP addresses, claims | %d |\n", len(r.Leaks))
	fmt.Fprintf(w, "| every machine converged | %v |\n| every deletion finished | %v |\n", r.Converged, r.DeletionsDone)
	fmt.Fprintf(w, "| secret findings | %d |\n", r.SecretFindings)
	fmt.Fprintf(w, "\n| phase | seconds | machines |\n|---|---|---|\n")
	for _, p := range r.Phases {
		fmt.Fprintf(w, "| %s | %.0f | %d |\n", p.Name, p.Seconds, p.Live)
	}
	fmt.Fprintf(w, "\n%s\n", r.SecretScan)
	if len(r.Problems) == 0 {
		fmt.Fprintf(w, "\nPASS: no duplicate, no leak, no secret, every machine converged and every deletion finished.\n")
		return
	}
	fmt.Fprintf(w, "\nFAIL: %d problem(s):\n", len(r.Problems))
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
}

func sortedMapKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
