package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// Status is the workload cluster's state as the demo reports it.
type Status struct {
	Available bool
	// AvailableReason explains a False or Unknown Available condition.
	AvailableReason string
	// Machines maps each Machine to "<phase>" plus what it is waiting for.
	Machines map[string]string
	// Waiting maps each Machine that is not Available to its Ready condition's message.
	Waiting        map[string]string
	CPReady, CPAll int
	WReady, WAll   int
	// VMs is how many VMs pvesim holds.
	VMs int
}

// Status reads the Cluster, its Machines and ProxmoxTalosMachines.
func (l *Lab) Status(ctx context.Context) (Status, error) {
	c := l.Mgmt.Client
	st := Status{Machines: map[string]string{}, Waiting: map[string]string{}, VMs: len(l.PVE.Inventory().VMs)}
	cl := &clusterv1.Cluster{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: l.ClusterName}, cl); err != nil {
		return st, err
	}
	if cond := meta.FindStatusCondition(cl.Status.Conditions, clusterv1.AvailableCondition); cond != nil {
		st.Available = cond.Status == "True"
		if !st.Available {
			st.AvailableReason = cond.Reason + ": " + oneLine(cond.Message)
		}
	} else {
		st.AvailableReason = "no Available condition yet"
	}
	machines := &clusterv1.MachineList{}
	if err := c.List(ctx, machines, client.InNamespace(l.Namespace), client.MatchingLabels{clusterv1.ClusterNameLabel: l.ClusterName}); err != nil {
		return st, err
	}
	infra := &infrav1.ProxmoxTalosMachineList{}
	if err := c.List(ctx, infra, client.InNamespace(l.Namespace)); err != nil {
		return st, err
	}
	vmOf := map[string]string{}
	for _, im := range infra.Items {
		if im.Spec.ProviderID != "" {
			vmOf[im.Name] = im.Spec.ProviderID
		}
	}
	for _, m := range machines.Items {
		_, cp := m.Labels[clusterv1.MachineControlPlaneLabel]
		// Counted as ready only when CAPI says the Machine is Available (Node healthy for
		// minReadySeconds): phase Running alone already holds before the Node is healthy.
		running := meta.IsStatusConditionTrue(m.Status.Conditions, clusterv1.MachineAvailableCondition)
		if cp {
			st.CPAll++
			if running {
				st.CPReady++
			}
		} else {
			st.WAll++
			if running {
				st.WReady++
			}
		}
		desc := m.Status.Phase
		if desc == "" {
			desc = "Pending"
		}
		if pid := vmOf[m.Spec.InfrastructureRef.Name]; pid != "" {
			desc += " (" + pid + ")"
		}
		if m.Status.NodeRef.IsDefined() {
			desc += ", node " + m.Status.NodeRef.Name
		}
		if running {
			desc += ", Available"
		} else if c := meta.FindStatusCondition(m.Status.Conditions, clusterv1.MachineReadyCondition); c != nil && c.Status != "True" && c.Message != "" {
			st.Waiting[m.Name] = oneLine(c.Message)
		}
		st.Machines[m.Name] = desc
	}
	return st, nil
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 240 {
		s = s[:240] + "…"
	}
	return s
}

// WaitAvailable polls the cluster until Available, calling report once per change (a new
// Machine, a phase change, a new reason) — no periodic noise.
func (l *Lab) WaitAvailable(ctx context.Context, report func(string)) (Status, error) {
	var last Status
	prev := map[string]string{}
	prevReason := ""
	prevRefused := map[string]string{}
	for {
		if r, ok := l.Nodes.(interface{ Refusals() map[string]string }); ok {
			now := r.Refusals()
			for vm, why := range now {
				if prevRefused[vm] != why {
					report(fmt.Sprintf("machine %s: its Talos node did not boot: %s", vm, strings.Join(strings.Fields(why), " ")))
				}
			}
			prevRefused = now
		}
		st, err := l.Status(ctx)
		if err == nil {
			last = st
			names := make([]string, 0, len(st.Machines))
			for n := range st.Machines {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				if prev[n] != st.Machines[n] {
					report(fmt.Sprintf("machine %s: %s", n, st.Machines[n]))
				}
			}
			prev = st.Machines
			if st.Available {
				report(fmt.Sprintf("cluster %s: Available", l.ClusterName))
				return st, nil
			}
			if st.AvailableReason != prevReason {
				report(fmt.Sprintf("cluster %s: not Available: %s", l.ClusterName, st.AvailableReason))
				prevReason = st.AvailableReason
			}
		} else if !apierrors.IsNotFound(err) {
			report("status: " + err.Error())
		}
		if err := l.Mgmt.CheckManagersAlive(); err != nil {
			return last, err
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("cluster %s not Available: %w; last state: %s%s", l.ClusterName, ctx.Err(), last.Describe(), l.refusals())
		case <-time.After(2 * time.Second):
		}
	}
}

// refusals names the VMs whose Talos node refused its machine config (or could not boot in
// the lab) with the reason, as "; nodes not booted: vm: reason", or "".
func (l *Lab) refusals() string {
	r, ok := l.Nodes.(interface{ Refusals() map[string]string })
	if !ok {
		return ""
	}
	m := r.Refusals()
	if len(m) == 0 {
		return ""
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, n+": "+strings.Join(strings.Fields(m[n]), " "))
	}
	return "; VMs not booted as Talos nodes (VM name = Machine name): " + strings.Join(parts, "; ")
}

// Describe is a one-line account of a status.
func (s Status) Describe() string {
	names := make([]string, 0, len(s.Machines))
	for n, d := range s.Machines {
		names = append(names, n+"="+d)
	}
	sort.Strings(names)
	var waiting []string
	for n, w := range s.Waiting {
		waiting = append(waiting, n+": "+w)
	}
	sort.Strings(waiting)
	return fmt.Sprintf("control plane %d/%d, workers %d/%d, VMs %d, Available=%v (%s); machines: %s; not ready: %s",
		s.CPReady, s.CPAll, s.WReady, s.WAll, s.VMs, s.Available, s.AvailableReason, strings.Join(names, ", "), strings.Join(waiting, "; "))
}

// Summary is the demo's closing line.
func (l *Lab) Summary(st Status) string {
	state := "Available"
	if !st.Available {
		state = "not Available"
	}
	return fmt.Sprintf("Cluster %s %s: %d/%d control plane, %d/%d workers, PVE API calls %d, image downloads %d",
		l.ClusterName, state, st.CPReady, l.ControlPlanes, st.WReady, l.Workers, l.PVECalls(), l.ImageDownloads())
}

// WriteWorkloadKubeconfig copies the <cluster>-kubeconfig Secret to the artifacts dir.
func (l *Lab) WriteWorkloadKubeconfig(ctx context.Context) (string, error) {
	s := &corev1.Secret{}
	if err := l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: l.ClusterName + "-kubeconfig"}, s); err != nil {
		return "", err
	}
	path := filepath.Join(l.ArtifactsDir, l.ClusterName+".kubeconfig")
	return path, os.WriteFile(path, s.Data["value"], 0o600)
}

// DeleteCluster deletes the Cluster and waits until it and every Machine are gone.
func (l *Lab) DeleteCluster(ctx context.Context) error {
	cl := &clusterv1.Cluster{}
	cl.Namespace, cl.Name = l.Namespace, l.ClusterName
	if err := l.Mgmt.Client.Delete(ctx, cl); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return poll(ctx, 2*time.Second, "cluster deletion", func() (bool, error) {
		err := l.Mgmt.Client.Get(ctx, client.ObjectKeyFromObject(cl), &clusterv1.Cluster{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}
