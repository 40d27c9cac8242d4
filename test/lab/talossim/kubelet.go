package talossim

import (
	"cmp"
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// startKubelet registers the node once its cluster's API answers, then turns
// it Ready after KubeletReadyDelay. No heartbeat is kept: the lab runs no
// kube-controller-manager, so nothing would ever mark the Node NotReady.
func (n *node) startKubelet() {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var cs kubernetes.Interface
		for {
			if cs = n.cluster.readyClient(); cs != nil {
				if err := n.register(cs, false); err == nil {
					break
				}
			}
			select {
			case <-n.done:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
		select {
		case <-n.done:
			return
		case <-time.After(n.sim.opts.KubeletReadyDelay):
		}
		for n.register(cs, true) != nil {
			select {
			case <-n.done:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
		n.sim.logf("node %s: Node Ready", n.spec.hostname)
	}()
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

// deleteNode removes the Node object of a powered-off machine, if the API is up.
func (c *cluster) deleteNode(name string) {
	cs := c.readyClient()
	if cs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		c.sim.logf("cluster %s: deleting Node %s: %v", c.name, name, err)
	}
}
