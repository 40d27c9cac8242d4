package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/workload"
)

// waitForNode finishes the machine in the workload cluster. Talos does not pass a
// providerID to the kubelet, so the Node registers without one and Cluster API could never
// link Machine and Node: this step sets Node.spec.providerID (allowed while it is empty).
// With a Proxmox cloud-controller-manager the CCM sets it instead; a value that names this
// VM is adopted into the machine's spec.providerID (docs/ccm.md). Once the Node is Ready
// the boot ISO, which holds the cluster's PKI, is removed.
func (r *Reconciler) waitForNode(ctx context.Context, s *Scope) (result, error) {
	if conditions.IsTrue(s.PTM, infrav1.NodeReadyCondition) && s.PTM.Status.BootISO == "" {
		s.PTM.Status.Step = infrav1.StepRunning
		return next()
	}
	s.PTM.Status.Step = infrav1.StepWaitingForNode
	if r.Workload == nil {
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.WaitingForNodeReason, "No workload cluster access configured")
		return stop(ctrlResultNone)
	}
	wc, err := r.Workload.Client(ctx, client.ObjectKeyFromObject(s.Cluster))
	if err == nil {
		var node *corev1.Node
		if node, err = findNode(ctx, wc, s); err == nil {
			return r.nodeFound(ctx, s, wc, node)
		}
	}
	if reason, unreachable := workload.Unreachable(err); unreachable {
		// The API server comes up with the first control plane's Talos: until then (and
		// whenever it does not answer) the machine waits, polled with backoff.
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.WaitingForNodeReason, "Waiting for the workload cluster's API server: "+reason)
		return r.waitOn(s, infrav1.NodeReadyCondition)
	}
	return result{}, fmt.Errorf("looking up the workload Node: %w", err)
}

// nodeFound sets or adopts the Node's providerID and, once the Node is Ready, removes the
// boot ISO. node is nil while the Node has not registered.
func (r *Reconciler) nodeFound(ctx context.Context, s *Scope, wc client.Client, node *corev1.Node) (result, error) {
	if node == nil {
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.WaitingForNodeReason, "Waiting for Node "+s.Machine.Name+" to register")
		return r.waitOn(s, infrav1.NodeReadyCondition)
	}
	switch {
	case node.Spec.ProviderID == s.PTM.Spec.ProviderID:
	case node.Spec.ProviderID == "" && awaitsCloudProvider(node):
		// The kubelet runs with --cloud-provider=external: a cloud-controller-manager
		// initializes the Node and sets its providerID. Setting ours first would make the
		// CCM fail to parse it and leave the Node tainted, so wait and adopt its value.
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.WaitingForCloudControllerManagerReason,
			fmt.Sprintf("Node %s carries the taint %s: waiting for the cloud-controller-manager to set its providerID (see docs/ccm.md)", node.Name, cloudProviderUninitializedTaint))
		return r.waitOn(s, infrav1.NodeReadyCondition)
	case node.Spec.ProviderID == "":
		base := node.DeepCopy()
		node.Spec.ProviderID = s.PTM.Spec.ProviderID
		if err := wc.Patch(ctx, node, client.MergeFrom(base)); err != nil {
			return result{}, fmt.Errorf("setting providerID on Node %s: %w", node.Name, err)
		}
		r.event(s, "Normal", "ProviderIDSet", "Set providerID of Node %s", node.Name)
	default:
		if err := IdentifiesVM(node.Spec.ProviderID, s.PTM); err != nil {
			// Another VM's Node (a reused name or address): never adopt it. The condition
			// says what was found; the requeue lets a corrected Node recover.
			msg := fmt.Sprintf("Node %s has providerID %s, which is not this machine's VM: %v", node.Name, node.Spec.ProviderID, err)
			if c := conditions.Get(s.PTM, infrav1.NodeReadyCondition); c == nil || c.Message != msg {
				r.warn(s, infrav1.ProviderIDMismatchReason, "%s", msg)
			}
			r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.ProviderIDMismatchReason, msg)
			return r.waitOn(s, infrav1.NodeReadyCondition)
		}
		// A cloud-controller-manager named this VM its own way (proxmox://<region>/<vmid>):
		// Cluster API links Machine and Node by an exact providerID match, and the Node's
		// value cannot change once set, so the machine takes the Node's.
		old := s.PTM.Spec.ProviderID
		s.PTM.Spec.ProviderID = node.Spec.ProviderID
		r.event(s, "Normal", "ProviderIDAdopted", "Adopted providerID %s of Node %s (was %s)", node.Spec.ProviderID, node.Name, old)
	}
	if !nodeReady(node) {
		r.setCondition(s, infrav1.NodeReadyCondition, false, infrav1.NotReadyReason, "Node "+node.Name+" is not Ready yet")
		return r.waitOn(s, infrav1.NodeReadyCondition)
	}
	r.setCondition(s, infrav1.NodeReadyCondition, true, infrav1.ReadyReason, "")

	if err := r.deleteBootISO(ctx, s); err != nil {
		reason, msg := cluster.ClassifyError(err)
		r.setCondition(s, infrav1.BootISOReadyCondition, true, reason, "Deleting the boot ISO failed: "+msg)
		return r.waitOn(s, infrav1.BootISOReadyCondition)
	}
	s.PTM.Status.Step = infrav1.StepRunning
	return next()
}

// findNode finds the machine's Node by name (the Talos hostname is the Machine name),
// else by one of its InternalIPs.
func findNode(ctx context.Context, wc client.Client, s *Scope) (*corev1.Node, error) {
	node := &corev1.Node{}
	err := wc.Get(ctx, client.ObjectKey{Name: s.Machine.Name}, node)
	if err == nil {
		return node, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}
	var ips []string
	for _, a := range s.PTM.Status.Addresses {
		if a.Type == clusterv1.MachineInternalIP {
			ips = append(ips, a.Address)
		}
	}
	if len(ips) == 0 {
		return nil, nil
	}
	var nodes corev1.NodeList
	if err := wc.List(ctx, &nodes); err != nil {
		return nil, err
	}
	for i := range nodes.Items {
		for _, a := range nodes.Items[i].Status.Addresses {
			if a.Type == corev1.NodeInternalIP && slices.Contains(ips, a.Address) {
				return &nodes.Items[i], nil
			}
		}
	}
	return nil, nil
}

// cloudProviderUninitializedTaint is the taint the kubelet puts on its Node when it runs
// with --cloud-provider=external, until a cloud-controller-manager initializes the Node.
const cloudProviderUninitializedTaint = "node.cloudprovider.kubernetes.io/uninitialized"

func awaitsCloudProvider(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == cloudProviderUninitializedTaint {
			return true
		}
	}
	return false
}

// IdentifiesVM returns nil when providerID names the machine's VM in one of the forms a
// Proxmox cloud-controller-manager writes: proxmox://<SMBIOS uuid> (this provider's own
// form; sergelogvinov's CCM with `features.provider: capmox`) or
// proxmox://<region>/<vmid> (that CCM's default; region is the name its configuration
// gives the Proxmox cluster, which this provider does not know, so only the VMID is
// compared). Otherwise the error says which VM the providerID names instead.
func IdentifiesVM(providerID string, ptm *infrav1.ProxmoxTalosMachine) error {
	rest, ok := strings.CutPrefix(providerID, infrav1.ProviderIDPrefix)
	if !ok {
		return fmt.Errorf("it is not a Proxmox providerID (%s...)", infrav1.ProviderIDPrefix)
	}
	region, id, regional := strings.Cut(rest, "/")
	if !regional {
		if ptm.Spec.SMBIOSUUID == "" || !strings.EqualFold(rest, ptm.Spec.SMBIOSUUID) {
			return fmt.Errorf("it names SMBIOS uuid %s, this machine's VM has %s", rest, ptm.Spec.SMBIOSUUID)
		}
		return nil
	}
	vmid, err := strconv.Atoi(id)
	if err != nil || strings.Contains(id, "/") {
		return fmt.Errorf("it is neither proxmox://<uuid> nor proxmox://<region>/<vmid>")
	}
	if ptm.Spec.VMID == nil || int(*ptm.Spec.VMID) != vmid {
		have := "none yet"
		if ptm.Spec.VMID != nil {
			have = strconv.Itoa(int(*ptm.Spec.VMID))
		}
		return fmt.Errorf("it names VMID %d in region %q, this machine's VM is VMID %s", vmid, region, have)
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func isNotFound(err error) bool {
	return errors.Is(err, errNotFound)
}
