package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/bench/harness"
)

// imageDownloadEndpoint is how the harness's Proxmox gets Talos images (the provider's
// default transfer: Proxmox downloads from the Image Factory).
const imageDownloadEndpoint = "POST /nodes/{node}/storage/{storage}/download-url"

// MinimumSequence is the least a VM create needs with a cached image: the create and a
// read of its task, the boot ISO upload, the start and a read of its task. A task is read
// by the cluster's task list (one read answers every task followed at the time) or, when
// the list cannot tell, by its own status.
var MinimumSequence = []string{
	"POST /nodes/{node}/qemu",
	"GET /cluster/tasks",
	"POST /nodes/{node}/storage/{storage}/upload",
	"POST /nodes/{node}/qemu/{vmid}/status/start",
	"GET /cluster/tasks",
}

// Report is one run's result (written as JSON under out/bench/).
type Report struct {
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Host     HostInfo  `json:"host"`
	N        int       `json:"n"`
	C        int       `json:"c"`
	Profile  string    `json:"profile"`
	NodeBoot string    `json:"nodeBoot"`
	Window   string    `json:"steadyWindow"`
	// Release is how the bootstrap data arrived: "burst" (all at once) or "one every <d>".
	Release string   `json:"release"`
	Sync    string   `json:"syncPeriod"`
	MgrArgs []string `json:"managerArgs,omitempty"`
	MgrEnv  []string `json:"managerEnv,omitempty"`

	MinimumSequence []string                `json:"minimumSequence"`
	Probes          []ProbeResult           `json:"probes,omitempty"`
	Platforms       []PlatformStats         `json:"platforms"`
	ImageDownloads  []harness.ImageDownload `json:"imageDownloads"`
	Manager         ManagerStats            `json:"manager"`
	// Ratios are metal / nocloud.
	Ratios map[string]float64 `json:"ratiosMetalToNocloud,omitempty"`

	Converged bool     `json:"converged"`
	Problems  []string `json:"problems,omitempty"`
}

// HostInfo is the machine the numbers were measured on.
type HostInfo struct {
	CPUs       int     `json:"cpus"`
	CPUModel   string  `json:"cpuModel"`
	MemoryGiB  float64 `json:"memoryGiB"`
	LoadBefore string  `json:"loadavgBefore"`
	LoadAfter  string  `json:"loadavgAfter"`
}

// ProbeResult is one VM created alone on its platform's Proxmox: calls from creating the
// machine until it is Running with its Node Ready.
type ProbeResult struct {
	Platform    string         `json:"platform"`
	Machine     string         `json:"machine"`
	ImageCached bool           `json:"imageCached"`
	Calls       map[string]int `json:"calls"`
	Total       int            `json:"total"`
	Seconds     float64        `json:"seconds"`
}

// PlatformStats are the scale phase's figures for the machines of one platform.
type PlatformStats struct {
	Platform string `json:"platform"`
	Machines int    `json:"machines"`
	Clusters int    `json:"clusters"`
	// CreateCallsPerVM: Proxmox calls from the machines' creation until all are Running,
	// divided by the machines (every image download included).
	CreateCallsPerVM      float64            `json:"createCallsPerVM"`
	CreateCallsByEndpoint map[string]float64 `json:"createCallsByEndpointPerVM"`
	// ImageCached: no image was transferred to Proxmox during the phase (the probes left
	// the shared nocloud image in storage), so the create figure is the issue's "image
	// cached" one; false when the phase's figure includes image downloads (-probe=false,
	// or metal, whose image is per machine).
	ImageCached bool `json:"imageCached"`
	// SteadyCallsPerMachineHour: calls in the steady window, per machine, scaled to an hour.
	SteadyCallsPerMachineHour float64            `json:"steadyCallsPerMachineHour"`
	SteadyByEndpoint          map[string]float64 `json:"steadyByEndpointPerMachineHour"`
	// Overhead: bootstrap data ready → provisioned, seconds.
	Overhead Dist `json:"overheadSeconds"`
	// ToRunning: bootstrap data ready → Running (Node Ready, boot ISO removed), seconds.
	ToRunning Dist      `json:"toRunningSeconds"`
	Samples   []float64 `json:"overheadSamples"` // for the plot
	// OverheadBySteps: mean seconds from bootstrap data ready to provisioned spent in each
	// status.step (from a step's first sighting to the next step's), where the time goes.
	OverheadBySteps map[string]float64 `json:"overheadBySteps"`
}

// Dist summarizes samples.
type Dist struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// ManagerStats are the manager process's figures.
type ManagerStats struct {
	PeakRSSMiB float64 `json:"peakRSSMiB"`
	CPUSeconds float64 `json:"cpuSeconds"`
	// APIRequestsPerMachineCreate: manager requests to the management API server from
	// bootstrap data ready until Running, per machine (client-go rest_client_requests_total).
	APIRequestsPerMachineCreate float64 `json:"apiRequestsPerMachineCreate"`
	// APIRequestsByMethodCreate splits it by "METHOD code".
	APIRequestsByMethodCreate map[string]float64 `json:"apiRequestsByMethodCreate"`
	// APIRequestsPerMachineHour: the same in the steady window, per machine per hour.
	APIRequestsPerMachineHour float64 `json:"apiRequestsPerMachineHour"`
	// APIRequestsByMethodSteady splits it by "METHOD code".
	APIRequestsByMethodSteady map[string]float64 `json:"apiRequestsByMethodSteady"`
	// WorkloadRequestsPerMachineCreate: requests to the workload API servers.
	WorkloadRequestsPerMachineCreate float64            `json:"workloadRequestsPerMachineCreate"`
	WorkloadRequestsPerMachineHour   float64            `json:"workloadRequestsPerMachineHour"`
	ReconcilesPerMachineCreate       map[string]float64 `json:"reconcilesPerMachineCreate"`
}

// run performs one benchmark run. The report is returned even when the run fails
// (converged false, problems listed), with the error.
func run(ctx context.Context, o harness.Options) (*Report, error) {
	rep := &Report{
		Started: time.Now().UTC(), N: o.N, C: o.C, Profile: o.Profile, MinimumSequence: MinimumSequence,
		Window: o.Window.String(), Release: releaseMode(o.ReleaseInterval), Sync: o.SyncPeriod.String(), MgrArgs: o.ManagerArgs, MgrEnv: o.ManagerEnv, Host: hostInfo(),
	}
	if o.N < o.C || o.C < 1 {
		return rep, fmt.Errorf("need N >= C >= 1, got N=%d C=%d", o.N, o.C)
	}
	h := &harness.Harness{O: o}
	rep.NodeBoot = h.NodeBoot().String()
	defer h.Stop()
	if err := h.Start(ctx); err != nil {
		return rep, err
	}
	fail := func(err error) (*Report, error) {
		rep.Problems = append(rep.Problems, err.Error())
		// The manager's footprint is worth knowing even when the run did not converge.
		if len(h.Mgrs) > 0 {
			if rss, cpu, perr := harness.ProcStats(h.Mgrs[0].Cmd.Process.Pid); perr == nil {
				rep.Manager.PeakRSSMiB, rep.Manager.CPUSeconds = float64(rss)/(1<<20), cpu
			}
		}
		rep.Host.LoadAfter = loadavg()
		rep.Seconds = time.Since(rep.Started).Seconds()
		return rep, err
	}

	// Probes: one VM at a time on a quiet Proxmox, so the Counters belong to it.
	var clusters []string
	index := 0
	if o.Probe {
		for _, p := range o.Platforms {
			name := "probe-" + string(p)
			if err := h.CreateCluster(ctx, name, index, p); err != nil {
				return fail(err)
			}
			index++
			clusters = append(clusters, name)
			if err := h.MarkInfrastructureProvisioned(ctx, []string{name}); err != nil {
				return fail(err)
			}
			for k, cached := range []bool{false, true} {
				before := h.PVEs[p].Stats().Calls
				began := time.Now()
				rec := &harness.MachineRecord{Name: fmt.Sprintf("%s-m%d", name, k), Cluster: name, Platform: p, Probe: true}
				if err := h.CreateMachine(ctx, rec, true); err != nil {
					return fail(err)
				}
				if err := h.WaitMachines(ctx, []string{rec.Name}, "Running", harness.Running); err != nil {
					return fail(err)
				}
				calls := harness.DiffCalls(h.PVEs[p].Stats().Calls, before)
				// A metal image is per machine: never cached for a new machine.
				rep.Probes = append(rep.Probes, ProbeResult{Platform: string(p), Machine: rec.Name, ImageCached: cached && p != infrav1.TalosPlatformMetal,
					Calls: calls, Total: harness.Total(calls), Seconds: time.Since(began).Seconds()})
				h.Logf("probe %s: %d Proxmox calls in %s", rec.Name, harness.Total(calls), time.Since(began).Round(time.Millisecond))
			}
		}
	}

	// Scale phase: C clusters, N machines, platforms round-robin by cluster.
	h.Logf("creating %d clusters", o.C)
	scaleClusters := make([]string, o.C)
	platformOf := map[string]infrav1.TalosPlatform{}
	for i := range scaleClusters {
		scaleClusters[i] = fmt.Sprintf("c%03d", i)
		platformOf[scaleClusters[i]] = o.Platforms[i%len(o.Platforms)]
	}
	if err := harness.Parallel(ctx, o.C, func(i int) error {
		return h.CreateCluster(ctx, scaleClusters[i], index+i, platformOf[scaleClusters[i]])
	}); err != nil {
		return fail(err)
	}
	clusters = append(clusters, scaleClusters...)
	if err := h.MarkInfrastructureProvisioned(ctx, scaleClusters); err != nil {
		return fail(err)
	}
	// The create figures count from here: a machine places itself, claims its addresses
	// and has its image ready before the bootstrap data comes, and those calls are part
	// of its create.
	before, err := h.Snapshot()
	if err != nil {
		return fail(err)
	}
	h.Logf("creating %d machines (bootstrap data not ready yet)", o.N)
	recs := make([]*harness.MachineRecord, o.N)
	names := make([]string, o.N)
	for j := range recs {
		cl := scaleClusters[j%o.C]
		recs[j] = &harness.MachineRecord{Name: fmt.Sprintf("%s-m%d", cl, j/o.C), Cluster: cl, Platform: platformOf[cl]}
		names[j] = recs[j].Name
	}
	if err := harness.Parallel(ctx, o.N, func(j int) error { return h.CreateMachine(ctx, recs[j], false) }); err != nil {
		return fail(err)
	}
	if err := h.WaitMachines(ctx, names, "waiting for bootstrap data", func(p *infrav1.ProxmoxTalosMachine, _ *harness.MachineRecord) bool {
		return p.Status.Step == infrav1.StepWaitingForBootstrapData
	}); err != nil {
		return fail(err)
	}

	if o.ReleaseInterval > 0 {
		h.Logf("releasing bootstrap data of %d machines, one every %s", o.N, o.ReleaseInterval)
		for j := range names {
			if err := h.ReleaseBootstrapData(ctx, names[j]); err != nil {
				return fail(err)
			}
			select {
			case <-ctx.Done():
				return fail(ctx.Err())
			case <-time.After(o.ReleaseInterval):
			}
		}
	} else {
		h.Logf("releasing bootstrap data of %d machines", o.N)
		if err := harness.Parallel(ctx, o.N, func(j int) error { return h.ReleaseBootstrapData(ctx, names[j]) }); err != nil {
			return fail(err)
		}
	}
	if err := h.WaitMachines(ctx, names, "provisioned", func(p *infrav1.ProxmoxTalosMachine, r *harness.MachineRecord) bool {
		return ptr.Deref(p.Status.Initialization.Provisioned, false)
	}); err != nil {
		return fail(err)
	}
	h.Logf("all provisioned; waiting for Running")
	if err := h.WaitMachines(ctx, names, "Running", harness.Running); err != nil {
		return fail(err)
	}
	// The harness sees a machine Running from the first of its pass's writes; that pass's
	// remaining writes and the pass its own writes start (status.observedGeneration after a
	// spec write) follow within a moment. They belong to the create: the steady window
	// starts once the manager's request count has settled.
	afterCreate, err := settled(ctx, h)
	if err != nil {
		return fail(err)
	}
	rep.Converged = true
	h.Logf("all %d machines Running; steady-state window %s", o.N, o.Window)

	all := append([]string(nil), names...)
	clusterOf := map[string]string{}
	h.Mu.Lock()
	for n, r := range h.Machines {
		clusterOf[n] = r.Cluster
		if r.Probe {
			all = append(all, n)
		}
	}
	h.Mu.Unlock()
	for p, s := range h.PVEs {
		var mine []string
		for _, n := range all {
			if h.Machines[n].Platform == p {
				mine = append(mine, n)
			}
		}
		rep.Problems = append(rep.Problems, harness.InventoryProblems(s, mine, clusterOf)...)
	}

	select {
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-time.After(o.Window):
	}
	afterSteady, err := h.Snapshot()
	if err != nil {
		return fail(err)
	}
	rss, cpu, err := harness.ProcStats(h.Mgrs[0].Cmd.Process.Pid)
	if err != nil {
		return fail(err)
	}
	rep.Manager.PeakRSSMiB = float64(rss) / (1 << 20)
	rep.Manager.CPUSeconds = cpu

	// Figures.
	hour := time.Hour.Seconds() / o.Window.Seconds()
	nAll := float64(len(all))
	rep.Manager.APIRequestsPerMachineCreate = (afterCreate.MgmtAPI - before.MgmtAPI) / float64(o.N)
	rep.Manager.APIRequestsPerMachineHour = (afterSteady.MgmtAPI - afterCreate.MgmtAPI) / nAll * hour
	rep.Manager.WorkloadRequestsPerMachineCreate = float64(afterCreate.Workload-before.Workload) / float64(o.N)
	rep.Manager.WorkloadRequestsPerMachineHour = float64(afterSteady.Workload-afterCreate.Workload) / nAll * hour
	rep.Manager.APIRequestsByMethodCreate = growth(before.MgmtByVerb, afterCreate.MgmtByVerb, float64(o.N))
	rep.Manager.APIRequestsByMethodSteady = growth(afterCreate.MgmtByVerb, afterSteady.MgmtByVerb, nAll/hour)
	rep.Manager.ReconcilesPerMachineCreate = map[string]float64{}
	for k, v := range afterCreate.Reconcile {
		rep.Manager.ReconcilesPerMachineCreate[k] = (v - before.Reconcile[k]) / float64(o.N)
	}
	for _, p := range o.Platforms {
		ps := PlatformStats{Platform: string(p), CreateCallsByEndpoint: map[string]float64{}, SteadyByEndpoint: map[string]float64{}}
		for _, c := range scaleClusters {
			if platformOf[c] == p {
				ps.Clusters++
			}
		}
		var over, toRun []float64
		var onPlatform float64
		stepSum := map[string]float64{}
		h.Mu.Lock()
		for _, r := range h.Machines {
			if r.Platform != p {
				continue
			}
			onPlatform++
			if r.Probe {
				continue
			}
			ps.Machines++
			addStepTimes(stepSum, r)
			over = append(over, r.Provisioned.Sub(r.DataReady).Seconds())
			toRun = append(toRun, r.Running.Sub(r.DataReady).Seconds())
		}
		h.Mu.Unlock()
		if ps.Machines == 0 {
			continue
		}
		created := harness.DiffCalls(afterCreate.PVE[p], before.PVE[p])
		for k, v := range created {
			ps.CreateCallsByEndpoint[k] = float64(v) / float64(ps.Machines)
		}
		ps.ImageCached = created[imageDownloadEndpoint] == 0
		ps.CreateCallsPerVM = float64(harness.Total(created)) / float64(ps.Machines)
		steady := harness.DiffCalls(afterSteady.PVE[p], afterCreate.PVE[p])
		for k, v := range steady {
			ps.SteadyByEndpoint[k] = float64(v) / onPlatform * hour
		}
		ps.SteadyCallsPerMachineHour = float64(harness.Total(steady)) / onPlatform * hour
		ps.Overhead, ps.ToRunning, ps.Samples = dist(over), dist(toRun), over
		ps.OverheadBySteps = map[string]float64{}
		for st, sum := range stepSum {
			ps.OverheadBySteps[st] = sum / float64(ps.Machines)
		}
		rep.Platforms = append(rep.Platforms, ps)
	}
	rep.ImageDownloads = h.ImageDownloads()
	rep.Ratios = ratios(rep)

	h.Mu.Lock()
	for _, err := range h.NodeErrs {
		rep.Problems = append(rep.Problems, err.Error())
	}
	h.Mu.Unlock()

	if o.Checkpoint != nil {
		// The figures are complete; teardown of a large run can take long.
		o.Checkpoint(rep)
	}

	// Teardown: nothing may be left on Proxmox.
	h.Logf("deleting everything")
	if err := h.Teardown(ctx, clusters); err != nil {
		return fail(err)
	}
	for p, s := range h.PVEs {
		for _, problem := range harness.InventoryProblems(s, nil, nil) {
			rep.Problems = append(rep.Problems, string(p)+": "+problem)
		}
	}
	if rss, cpu, err := harness.ProcStats(h.Mgrs[0].Cmd.Process.Pid); err == nil {
		rep.Manager.PeakRSSMiB, rep.Manager.CPUSeconds = float64(rss)/(1<<20), cpu
	}
	rep.Host.LoadAfter = loadavg()
	rep.Seconds = time.Since(rep.Started).Seconds()
	if len(rep.Problems) > 0 {
		return rep, errors.New("run finished with problems:\n  " + strings.Join(rep.Problems, "\n  "))
	}
	return rep, nil
}

func dist(s []float64) Dist {
	if len(s) == 0 {
		return Dist{}
	}
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	q := func(p float64) float64 {
		i := int(p*float64(len(c))+0.999999) - 1
		return c[max(0, min(i, len(c)-1))]
	}
	return Dist{P50: q(0.5), P99: q(0.99), Max: c[len(c)-1]}
}

func ratios(rep *Report) map[string]float64 {
	var noc, met *PlatformStats
	for i := range rep.Platforms {
		switch infrav1.TalosPlatform(rep.Platforms[i].Platform) {
		case infrav1.TalosPlatformNoCloud:
			noc = &rep.Platforms[i]
		case infrav1.TalosPlatformMetal:
			met = &rep.Platforms[i]
		}
	}
	if noc == nil || met == nil {
		return nil
	}
	downloads := map[string]float64{}
	for _, d := range rep.ImageDownloads {
		downloads[d.Platform] += float64(d.Downloads)
	}
	// Per machine, probes included (they downloaded too).
	perMachine := func(p string) float64 {
		n := 0
		for _, pr := range rep.Probes {
			if pr.Platform == p {
				n++
			}
		}
		for _, ps := range rep.Platforms {
			if ps.Platform == p {
				n += ps.Machines
			}
		}
		return downloads[p] / float64(max(n, 1))
	}
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	return map[string]float64{
		"imageDownloadsPerMachine": div(perMachine("metal"), perMachine("nocloud")),
		"createCallsPerVM":         div(met.CreateCallsPerVM, noc.CreateCallsPerVM),
		"steadyCallsPerMachine":    div(met.SteadyCallsPerMachineHour, noc.SteadyCallsPerMachineHour),
		"overheadP50":              div(met.Overhead.P50, noc.Overhead.P50),
		"toRunningP50":             div(met.ToRunning.P50, noc.ToRunning.P50),
	}
}

func hostInfo() HostInfo {
	h := HostInfo{CPUs: runtime.NumCPU(), LoadBefore: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %f kB", &kb); err == nil {
			h.MemoryGiB = kb / (1 << 20)
		}
	}
	return h
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func releaseMode(interval time.Duration) string {
	if interval > 0 {
		return "one every " + interval.String()
	}
	return "burst"
}

// addStepTimes adds to sum the seconds machine r spent in each step between its bootstrap
// data being ready and it being provisioned.
func addStepTimes(sum map[string]float64, r *harness.MachineRecord) {
	type seen struct {
		step string
		at   time.Time
	}
	var order []seen
	for st, at := range r.StepSeen {
		if !at.Before(r.DataReady) && at.Before(r.Provisioned) {
			order = append(order, seen{string(st), at})
		}
	}
	sort.Slice(order, func(i, j int) bool { return order[i].at.Before(order[j].at) })
	from, step := r.DataReady, "(bootstrap data read)"
	for _, o := range order {
		sum[step] += o.at.Sub(from).Seconds()
		from, step = o.at, o.step
	}
	sum[step] += r.Provisioned.Sub(from).Seconds()
}

// growth is how much each counter grew from before to after, divided by per; counters
// that did not grow are left out.
func growth(before, after map[string]float64, per float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d / per
		}
	}
	return out
}

// settled returns the counters once the manager's management API request count has not
// moved for a second (at most 30 s).
func settled(ctx context.Context, h *harness.Harness) (harness.Counters, error) {
	last, err := h.Snapshot()
	if err != nil {
		return last, err
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(time.Second):
		}
		c, err := h.Snapshot()
		if err != nil {
			return c, err
		}
		if c.MgmtAPI == last.MgmtAPI {
			return c, nil
		}
		last = c
	}
	return last, nil
}
