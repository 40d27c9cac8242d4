package talossim

import (
	"cmp"
	"context"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// nodeLeaseNamespace holds the kubelets' heartbeat Leases, one per Node, named after it.
const nodeLeaseNamespace = "kube-node-lease"

// startKubelet registers the node once its cluster's API answers, turns it Ready after
// KubeletReadyDelay, then keeps heartbeating like a kubelet: it renews its Lease in
// kube-node-lease every HeartbeatInterval and posts Ready again when the node lifecycle
// controller (monitorNodes) had marked it Unknown. Nothing is sent while the VM's Proxmox
// node is unreachable (Options.HostReachable); a stopped VM stops heartbeating with the node.
func (n *node) startKubelet() {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var cs kubernetes.Interface
		for {
			if cs = n.cluster.readyClient(); cs != nil && n.sim.reachable(n.vmid) {
				if err := n.register(cs, false); err == nil {
					break
				}
			}
			if !n.sleep(250 * time.Millisecond) {
				return
			}
		}
		_ = n.renewLease(cs)
		if !n.sleep(n.sim.opts.KubeletReadyDelay) {
			return
		}
		for n.register(cs, true) != nil {
			if !n.sleep(250 * time.Millisecond) {
				return
			}
		}
		n.sim.logf("node %s: Node Ready", n.spec.hostname)
		for n.sleep(n.sim.opts.HeartbeatInterval) {
			// The workload API server may have been restarted (a new client).
			if c := n.cluster.readyClient(); c != nil {
				cs = c
			}
			if !n.sim.reachable(n.vmid) {
				continue
			}
			if err := n.renewLease(cs); err != nil {
				continue
			}
			n.repostIfNotReady(cs)
		}
	}()
}

// sleep waits d or until the node stops; false means stopped.
func (n *node) sleep(d time.Duration) bool {
	select {
	case <-n.done:
		return false
	case <-time.After(d):
		return true
	}
}

// renewLease creates or renews the node's heartbeat Lease, as the kubelet's lease controller.
func (n *node) renewLease(cs kubernetes.Interface) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	leases := cs.CoordinationV1().Leases(nodeLeaseNamespace)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, n.spec.hostname, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.spec.hostname, Namespace: nodeLeaseNamespace},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(n.spec.hostname),
				LeaseDurationSeconds: ptr.To(int32(n.sim.opts.NodeMonitorGracePeriod.Seconds())), RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// repostIfNotReady posts the kubelet's status again when the Node's Ready condition is not
// True (the kubelet compares what it would post with what the API holds). A Node deleted
// while the kubelet runs is not re-created: the kubelet registers only when it starts.
func (n *node) repostIfNotReady(cs kubernetes.Interface) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	obj, err := cs.CoreV1().Nodes().Get(ctx, n.spec.hostname, metav1.GetOptions{})
	if err != nil {
		return
	}
	for _, c := range obj.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return
		}
	}
	if n.register(cs, true) == nil {
		n.sim.logf("node %s: kubelet posts Ready again", n.spec.hostname)
	}
}

// register creates or updates the Node like a Talos kubelet: name = hostname,
// control-plane role label, InternalIP + Hostname addresses and no
// spec.providerID (Talos never sets it; the infrastructure provider does).
func (n *node) register(cs kubernetes.Interface, ready bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes := cs.CoreV1().Nodes()
	obj, err := nodes.Get(ctx, n.spec.hostname, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		labels := map[string]string{
			"kubernetes.io/hostname": n.spec.hostname, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
		}
		if n.spec.role == RoleControlPlane {
			labels["node-role.kubernetes.io/control-plane"] = ""
		}
		obj, err = nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.spec.hostname, Labels: labels}}, metav1.CreateOptions{})
	}
	if err != nil {
		return err
	}
	now := metav1.Now()
	cond := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady",
		Message: "container runtime network not ready", LastHeartbeatTime: now, LastTransitionTime: now}
	if ready {
		cond.Status, cond.Reason, cond.Message = corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"
	}
	// A real kubelet reports the pressure conditions too, and Cluster API's NodeHealthy
	// waits for them.
	obj.Status.Conditions = []corev1.NodeCondition{cond}
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		obj.Status.Conditions = append(obj.Status.Conditions, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse,
			Reason: "KubeletHas" + "No" + string(t), Message: "kubelet reports no " + string(t), LastHeartbeatTime: now, LastTransitionTime: now})
	}
	obj.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n.spec.addr.String()},
		{Type: corev1.NodeHostName, Address: n.spec.hostname},
	}
	obj.Status.NodeInfo = nodeInfo(n.spec)
	_, err = nodes.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	return err
}

// nodeInfo is what a Talos kubelet reports: the kubelet version is the tag of the kubelet
// image its machine config names (a Kubernetes upgrade changes it), the OS image names the
// Talos version of the image the node booted from (a Talos upgrade changes it), as
// "Talos (v1.14.0)".
func nodeInfo(spec *nodeSpec) corev1.NodeSystemInfo {
	return corev1.NodeSystemInfo{OSImage: "Talos (" + cmp.Or(spec.talosVersion, "unknown") + ")", OperatingSystem: "linux",
		Architecture: "amd64", KubeletVersion: spec.kubeletVersion, ContainerRuntimeVersion: "containerd://2.1.0"}
}
