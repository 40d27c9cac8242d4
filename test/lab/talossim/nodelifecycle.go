package talossim

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The lab runs no kube-controller-manager; monitorNodes plays its node lifecycle controller,
// which is what turns a lost machine into an unhealthy Node that a MachineHealthCheck acts on.

// unreachableTaints are the taints the node lifecycle controller puts on a Node whose kubelet
// stopped posting status (node.kubernetes.io/unreachable).
var unreachableTaints = []corev1.Taint{
	{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute},
}

// monitorNodes runs while the workload API server does: every monitor period it marks every
// Node whose heartbeat (Lease renewal, else the Ready condition's heartbeat) is older than
// NodeMonitorGracePeriod as Ready=Unknown, every condition Unknown with reason
// NodeStatusUnknown, tainted unreachable; and it lifts the taints once the kubelet posts
// Ready again.
func (c *cluster) monitorNodes(ctx context.Context, cs kubernetes.Interface) {
	period := max(c.sim.opts.NodeMonitorGracePeriod/5, 200*time.Millisecond)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
		c.checkNodes(ctx, cs)
	}
}

func (c *cluster) checkNodes(ctx context.Context, cs kubernetes.Interface) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	leases, err := cs.CoordinationV1().Leases(nodeLeaseNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	renewed := map[string]time.Time{}
	for _, l := range leases.Items {
		if l.Spec.RenewTime != nil {
			renewed[l.Name] = l.Spec.RenewTime.Time
		}
	}
	grace := c.sim.opts.NodeMonitorGracePeriod
	for i := range nodes.Items {
		n := &nodes.Items[i]
		ready := readyCondition(n)
		if ready == nil {
			continue // not registered with a status yet
		}
		last, ok := renewed[n.Name]
		if !ok || ready.LastHeartbeatTime.After(last) {
			last = ready.LastHeartbeatTime.Time
		}
		switch {
		case ready.Status != corev1.ConditionUnknown && time.Since(last) > grace:
			c.markUnknown(ctx, cs, n)
		case ready.Status == corev1.ConditionTrue && hasUnreachableTaint(n):
			c.setUnreachableTaints(ctx, cs, n, false)
		}
	}
}

func readyCondition(n *corev1.Node) *corev1.NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

func hasUnreachableTaint(n *corev1.Node) bool {
	return slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == corev1.TaintNodeUnreachable })
}

// markUnknown does what the node lifecycle controller does to a Node gone silent.
func (c *cluster) markUnknown(ctx context.Context, cs kubernetes.Interface, n *corev1.Node) {
	now := metav1.Now()
	for i := range n.Status.Conditions {
		cond := &n.Status.Conditions[i]
		cond.Status, cond.Reason, cond.Message = corev1.ConditionUnknown, "NodeStatusUnknown", "Kubelet stopped posting node status."
		cond.LastTransitionTime = now
	}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return
	}
	c.sim.logf("cluster %s: Node %s Ready=Unknown (no heartbeat for %s)", c.name, n.Name, c.sim.opts.NodeMonitorGracePeriod)
	c.setUnreachableTaints(ctx, cs, n, true)
}

func (c *cluster) setUnreachableTaints(ctx context.Context, cs kubernetes.Interface, n *corev1.Node, on bool) {
	cur, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return
	}
	taints := slices.DeleteFunc(cur.Spec.Taints, func(t corev1.Taint) bool { return t.Key == corev1.TaintNodeUnreachable })
	if on {
		now := metav1.Now()
		for _, t := range unreachableTaints {
			if t.Effect == corev1.TaintEffectNoExecute {
				t.TimeAdded = &now // eviction counts from here
			}
			taints = append(taints, t)
		}
	}
	cur.Spec.Taints = taints
	_, _ = cs.CoreV1().Nodes().Update(ctx, cur, metav1.UpdateOptions{})
}
