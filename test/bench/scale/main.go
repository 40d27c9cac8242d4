// Command scale is the scale and cost benchmark of the provider (`make bench-scale`): the
// real manager binary against a real kube-apiserver (envtest), pvesim and factorysim on
// loopback, with N ProxmoxTalosMachines across C clusters whose Cluster API objects the
// harness creates itself, so Cluster API core's own cost is not counted. It prints a table
// and writes report.json, overhead.svg and calls.svg under -out. docs/performance.md
// explains every figure.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/bench/harness"
)

func main() {
	o := harness.Options{Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+f+"\n", a...) }}
	var platforms, mgrArgs, mgrEnv string
	flag.IntVar(&o.N, "n", 10, "ProxmoxTalosMachines in the scale phase")
	flag.IntVar(&o.C, "c", 2, "clusters they are spread over")
	flag.StringVar(&o.Profile, "profile", pvesim.ProfileRealistic, "pvesim profile: fast (task latency ~0, for the overhead figure) or realistic (for call counts)")
	flag.StringVar(&platforms, "platforms", "nocloud,metal", "Talos platforms side by side (clusters round-robin, one pvesim each)")
	flag.BoolVar(&o.Probe, "probe", true, "measure single VM creates (image not cached, then cached) per platform first")
	flag.DurationVar(&o.NodeBoot, "node-boot", -1, "provisioned → Node Ready delay (Talos boot); negative: 60 Proxmox seconds at the profile's time scale")
	flag.DurationVar(&o.ReleaseInterval, "release-interval", 0, "release the machines' bootstrap data one at a time this far apart (0: all at once, a burst)")
	flag.DurationVar(&o.Window, "window", 2*time.Minute, "steady-state measuring window")
	flag.DurationVar(&o.SyncPeriod, "sync-period", time.Minute, "the manager's --sync-period")
	flag.DurationVar(&o.Timeout, "timeout", 15*time.Minute, "bound on convergence and on teardown, each")
	flag.StringVar(&mgrArgs, "manager-args", "", "extra manager flags, space separated")
	flag.StringVar(&mgrEnv, "manager-env", "", "extra NAME=value environment of the manager, space separated (e.g. GOMEMLIMIT=180MiB, as from a 200 MiB container limit)")
	flag.StringVar(&o.ManagerBin, "manager", "", "prebuilt manager binary (default: go build the repository root)")
	flag.StringVar(&o.Out, "out", "out/bench", "output directory")
	flag.Parse()
	for _, p := range strings.Split(platforms, ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.Platforms = append(o.Platforms, infrav1.TalosPlatform(p))
		}
	}
	o.ManagerArgs = strings.Fields(mgrArgs)
	o.ManagerEnv = strings.Fields(mgrEnv)

	// The harness's own client-go and controller-runtime logs are noise here; the
	// manager's logs go to <out>/manager.log.
	ctrllog.SetLogger(logr.Discard())
	o.Checkpoint = func(v any) {
		rep := v.(*Report)
		f, err := os.Create(filepath.Join(o.Out, "before-teardown.md"))
		if err != nil {
			o.Logf("checkpoint: %v", err)
			return
		}
		defer f.Close()
		if err := writeReport(filepath.Join(o.Out, "before-teardown"), rep, f); err != nil {
			o.Logf("checkpoint: %v", err)
		}
		o.Logf("figures written to %s (teardown and leak check follow)", f.Name())
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	rep, err := run(ctx, o)
	if rep != nil {
		if werr := writeReport(o.Out, rep, os.Stdout); werr != nil {
			fmt.Fprintln(os.Stderr, "writing the report:", werr)
			os.Exit(1)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale FAILED:", err)
		os.Exit(1)
	}
}

// writeReport prints the table and writes report.json and the plots.
func writeReport(dir string, rep *Report, w io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), b, 0o644); err != nil {
		return err
	}
	printTable(w, rep)
	if err := os.WriteFile(filepath.Join(dir, "overhead.svg"), overheadSVG(rep), 0o644); err != nil {
		return err
	}
	if len(rep.Probes) > 0 {
		if err := os.WriteFile(filepath.Join(dir, "calls.svg"), callsSVG(rep), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func printTable(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "\n## bench-scale: N=%d C=%d profile=%s node-boot=%s window=%s sync-period=%s\n",
		rep.N, rep.C, rep.Profile, rep.NodeBoot, rep.Window, rep.Sync)
	if len(rep.MgrArgs)+len(rep.MgrEnv) > 0 {
		fmt.Fprintf(w, "manager: %s %s\n", strings.Join(rep.MgrEnv, " "), strings.Join(rep.MgrArgs, " "))
	}
	fmt.Fprintf(w, "host: %d CPUs (%s), %.0f GiB; load average before %s, after %s\n\n",
		rep.Host.CPUs, rep.Host.CPUModel, rep.Host.MemoryGiB, rep.Host.LoadBefore, rep.Host.LoadAfter)

	if len(rep.Probes) > 0 {
		// Endpoint × probe table, beside the minimum sequence.
		endpoints := map[string]bool{}
		for _, p := range rep.Probes {
			for k := range p.Calls {
				endpoints[k] = true
			}
		}
		min := map[string]int{}
		for _, k := range rep.MinimumSequence {
			min[k]++
			endpoints[k] = true
		}
		keys := sortedKeys(endpoints)
		fmt.Fprintf(w, "### Proxmox calls per VM create (machine created → Running, Node Ready)\n\n| endpoint | minimum |")
		for _, p := range rep.Probes {
			fmt.Fprintf(w, " %s (%s) |", p.Machine, cachedLabel(p.ImageCached))
		}
		fmt.Fprintf(w, "\n|---|---|%s\n", strings.Repeat("---|", len(rep.Probes)))
		for _, k := range keys {
			fmt.Fprintf(w, "| `%s` | %d |", k, min[k])
			for _, p := range rep.Probes {
				fmt.Fprintf(w, " %d |", p.Calls[k])
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "| **total** | **%d** |", len(rep.MinimumSequence))
		for _, p := range rep.Probes {
			fmt.Fprintf(w, " **%d** |", p.Total)
		}
		fmt.Fprintf(w, "\n| seconds | |")
		for _, p := range rep.Probes {
			fmt.Fprintf(w, " %.1f |", p.Seconds)
		}
		fmt.Fprint(w, "\n\n")
	}

	if rep.Release == "burst" {
		fmt.Fprintf(w, "### Scale phase (bootstrap data released for all machines at once)\n\n")
	} else {
		fmt.Fprintf(w, "### Scale phase (bootstrap data released %s)\n\n", rep.Release)
	}
	fmt.Fprintf(w, "| platform | machines | clusters | calls/VM create | image | calls/machine/hour steady | overhead p50 / p99 / max (s) | to Running p50 / p99 / max (s) |\n|---|---|---|---|---|---|---|---|\n")
	for _, p := range rep.Platforms {
		image := "cached"
		if !p.ImageCached {
			image = "downloaded in the phase"
		}
		fmt.Fprintf(w, "| %s | %d | %d | %.2f | %s | %.1f | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f |\n", p.Platform, p.Machines, p.Clusters,
			p.CreateCallsPerVM, image, p.SteadyCallsPerMachineHour, p.Overhead.P50, p.Overhead.P99, p.Overhead.Max,
			p.ToRunning.P50, p.ToRunning.P99, p.ToRunning.Max)
	}
	for _, p := range rep.Platforms {
		fmt.Fprintf(w, "\noverhead by step, %s, mean seconds:", p.Platform)
		keys := sortedKeys(p.OverheadBySteps)
		sort.SliceStable(keys, func(i, j int) bool { return p.OverheadBySteps[keys[i]] > p.OverheadBySteps[keys[j]] })
		for _, k := range keys {
			fmt.Fprintf(w, " %s %.2f;", k, p.OverheadBySteps[k])
		}
		fmt.Fprintln(w)
	}
	for _, p := range rep.Platforms {
		if len(p.SteadyByEndpoint) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nsteady state, %s, calls per machine per hour by endpoint:", p.Platform)
		for _, k := range sortedKeys(p.SteadyByEndpoint) {
			fmt.Fprintf(w, " `%s` %.1f;", k, p.SteadyByEndpoint[k])
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "\n### Image downloads per (schematic, Talos version, storage)\n\n| platform | schematic | version | file | storage | downloads |\n|---|---|---|---|---|---|\n")
	// Per-machine metal images would make a row per machine: past a few rows per platform
	// the table summarizes them (report.json keeps every row).
	rows := map[string][]harness.ImageDownload{}
	for _, d := range rep.ImageDownloads {
		rows[d.Platform] = append(rows[d.Platform], d)
	}
	for _, p := range sortedKeys(rows) {
		ds := rows[p]
		if len(ds) <= 4 {
			for _, d := range ds {
				fmt.Fprintf(w, "| %s | %s… | %s | %s | %s | %d |\n", d.Platform, d.Schematic[:min(12, len(d.Schematic))], d.Version, d.File, d.Storage, d.Downloads)
			}
			continue
		}
		lo, hi := ds[0].Downloads, ds[0].Downloads
		for _, d := range ds {
			lo, hi = min(lo, d.Downloads), max(hi, d.Downloads)
		}
		fmt.Fprintf(w, "| %s | %d schematics (one per machine) | %s | %s | %s | %d–%d each |\n", p, len(ds), ds[0].Version, ds[0].File, ds[0].Storage, lo, hi)
	}

	m := rep.Manager
	fmt.Fprintf(w, "\n### Manager\n\n| figure | value |\n|---|---|\n")
	fmt.Fprintf(w, "| peak RSS (VmHWM) | %.0f MiB |\n| CPU seconds (user+system, whole run) | %.1f |\n", m.PeakRSSMiB, m.CPUSeconds)
	// Each split follows the figure it splits (the create split used to follow the steady
	// figure, and read as a split of it).
	fmt.Fprintf(w, "| management API requests per machine, create | %.1f |\n", m.APIRequestsPerMachineCreate)
	for _, k := range sortedKeys(m.APIRequestsByMethodCreate) {
		fmt.Fprintf(w, "| … create, of which %s | %.1f |\n", k, m.APIRequestsByMethodCreate[k])
	}
	fmt.Fprintf(w, "| management API requests per machine per hour, steady | %.1f |\n", m.APIRequestsPerMachineHour)
	for _, k := range sortedKeys(m.APIRequestsByMethodSteady) {
		fmt.Fprintf(w, "| … steady, of which %s | %.1f |\n", k, m.APIRequestsByMethodSteady[k])
	}
	fmt.Fprintf(w, "| workload API requests per machine, create | %.1f |\n| workload API requests per machine per hour, steady | %.1f |\n", m.WorkloadRequestsPerMachineCreate, m.WorkloadRequestsPerMachineHour)
	for _, k := range sortedKeys(m.ReconcilesPerMachineCreate) {
		fmt.Fprintf(w, "| reconciles per machine, create (%s) | %.1f |\n", k, m.ReconcilesPerMachineCreate[k])
	}
	if len(rep.Ratios) > 0 {
		fmt.Fprintf(w, "\n### metal / nocloud\n\n| ratio | value |\n|---|---|\n")
		for _, k := range sortedKeys(rep.Ratios) {
			fmt.Fprintf(w, "| %s | %.2f |\n", k, rep.Ratios[k])
		}
	}
	fmt.Fprintf(w, "\nconverged: %v; problems: %d; run took %.0f s\n", rep.Converged, len(rep.Problems), rep.Seconds)
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
}

func cachedLabel(c bool) string {
	if c {
		return "cached"
	}
	return "not cached"
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
