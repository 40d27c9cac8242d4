// Command demo is `make demo`: it starts the lab (management cluster, Proxmox and Image Factory
// simulators, Talos node simulator, all on loopback), applies the default cluster flavor and
// reports progress until the cluster is Available.
//
// Environment: DEMO_EXIT=1 exits once Available (0) or on timeout (1); DEMO_TIMEOUT (default
// 10m) bounds the wait; ARTIFACTS overrides the artifacts folder.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Printf("[%6s] %s\n", time.Since(start).Round(time.Second), fmt.Sprintf(format, args...))
	}
	timeout := 10 * time.Minute
	if v := os.Getenv("DEMO_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("DEMO_TIMEOUT: %w", err)
		}
		timeout = d
	}
	exitWhenAvailable := os.Getenv("DEMO_EXIT") == "1"

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// DEMO_TIMEOUT bounds the whole run, lab start included, so DEMO_EXIT=1 always ends.
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	artifacts := os.Getenv("ARTIFACTS")
	if artifacts == "" {
		artifacts = filepath.Join(testenv.RepoRoot(), "_artifacts", "demo-"+time.Now().Format("20060102-150405"))
	}
	logf("artifacts: %s", artifacts)

	// Both scripts build once and then answer from their cache.
	for _, script := range []string{"envtest-assets.sh", "lab-binaries.sh"} {
		cmd := exec.CommandContext(ctx, filepath.Join(testenv.RepoRoot(), "hack", script))
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("hack/%s: %w", script, err)
		}
	}

	// PVESIM_PROFILE=fast trades the realistic Proxmox windows for speed.
	l, err := lab.Start(waitCtx, lab.Options{ArtifactsDir: artifacts, NodeSim: lab.TalosNodeSim, Logf: logf, PVEProfile: os.Getenv("PVESIM_PROFILE")})
	if err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C during start: everything started is already stopped.
		}
		return err
	}
	defer func() {
		logf("stopping the lab")
		l.Stop()
		if left := l.Leftovers(); len(left) > 0 {
			logf("warning: still running after stop: %v", left)
		}
		logf("stopped; artifacts in %s", artifacts)
	}()

	st, err := l.WaitAvailable(waitCtx, func(line string) { logf("%s", line) })
	fmt.Println(l.Summary(st))
	if err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C: stop quietly.
		}
		logf("manager logs: %v", l.Mgmt.ManagerLogs())
		return err
	}
	logf("took %s", time.Since(start).Round(time.Second))

	kc, err := l.WriteWorkloadKubeconfig(ctx)
	if err != nil {
		logf("workload kubeconfig: %v", err)
	}
	fmt.Printf("\nManagement cluster: export KUBECONFIG=%s\n", l.Mgmt.Kubeconfig)
	if kc != "" {
		fmt.Printf("Workload cluster:   kubectl --kubeconfig %s get nodes\n", kc)
	}
	fmt.Printf("Logs and manifests: %s\n\n", artifacts)
	if exitWhenAvailable {
		return nil
	}
	logf("running until Ctrl-C")
	<-ctx.Done()
	return nil
}
