// Command chaos is `make chaos` (docs/reliability.md): the provider's manager through a
// seeded schedule of Proxmox faults and SIGKILLs while clusters are created, scaled,
// upgraded and deleted; it prints the result table, writes result.json under -out and
// exits non-zero on any duplicate, leak, unconverged machine, unfinished deletion or
// secret found.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/chaos"
)

func main() {
	o := chaos.Options{Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+f+"\n", a...) }}
	flag.Int64Var(&o.Seed, "seed", 1, "seed of the fault schedule (pvesim's fault RNG, kill gaps, outage time, scale-down victims)")
	flag.IntVar(&o.Machines, "machines", 30, "machines the workload creates (upgrade replacements come on top)")
	flag.IntVar(&o.Clusters, "clusters", 5, "clusters the machines are spread over")
	flag.DurationVar(&o.Duration, "duration", 10*time.Minute, "chaos window: kills are spread over it; the clusters stay under faults at least this long before deletion")
	flag.IntVar(&o.Kills, "kills", 10, "least number of manager SIGKILLs")
	flag.IntVar(&o.DeleteKills, "delete-kills", 1, "least number of kills while a VM delete task runs")
	flag.IntVar(&o.Replicas, "replicas", 1, "manager replicas (2: leader election, kills hit the leader)")
	flag.Float64Var(&o.ErrorRate, "error-rate", 0.20, "share of Proxmox calls answered 500")
	flag.Float64Var(&o.TaskFailureRate, "task-failure-rate", 0.05, "share of Proxmox tasks that fail")
	flag.Float64Var(&o.LockTimeoutRate, "lock-timeout-rate", 0.03, "share of locked operations that time out on their lock")
	flag.Float64Var(&o.ProxyErrorRate, "proxy-error-rate", 0.05, "share of forwarded calls answered 596")
	flag.Float64Var(&o.UnreapedTaskRate, "unreaped-task-rate", 0.05, "share of Proxmox tasks the node's task list keeps showing running after they ended")
	flag.Uint64Var(&o.ImportThroughput, "import-throughput", 4<<20, "import speed in bytes per Proxmox second (the realistic profile's is 40 MiB)")
	flag.DurationVar(&o.NodeOffline, "node-offline", 0, "how long one Proxmox node is offline (default: duration/5)")
	flag.DurationVar(&o.Timeout, "timeout", 20*time.Minute, "bound on each wait for convergence or deletion")
	flag.StringVar(&o.ManagerBin, "manager", "", "prebuilt manager binary (default: go build the repository root)")
	flag.StringVar(&o.Out, "out", "out/chaos", "output directory (manager logs, result.json)")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	res, err := chaos.Run(ctx, o)
	chaos.WriteTable(os.Stdout, res)
	if b, jerr := json.MarshalIndent(res, "", "  "); jerr == nil {
		_ = os.WriteFile(filepath.Join(o.Out, "result.json"), b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos FAILED")
		os.Exit(1)
	}
}
