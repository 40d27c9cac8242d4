package machine

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/workload"
)

// TestIdentifiesVM: the providerID forms a Proxmox CCM writes are recognised as this
// machine's VM only when their uuid or VMID is the machine's; anything else is refused
// with a message that names what the providerID points at.
func TestIdentifiesVM(t *testing.T) {
	ptm := &infrav1.ProxmoxTalosMachine{Spec: infrav1.ProxmoxTalosMachineSpec{
		SMBIOSUUID: "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
		VMID:       ptr.To[int32](123),
	}}
	tests := []struct {
		providerID string
		wantErr    string
	}{
		{"proxmox://6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f", ""},
		{"proxmox://6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F", ""},
		{"proxmox://cluster-1/123", ""},
		{"proxmox:///123", ""}, // the CCM allows an empty region
		{"proxmox://cluster-1/124", `it names VMID 124 in region "cluster-1", this machine's VM is VMID 123`},
		{"proxmox://00000000-0000-0000-0000-000000000001", "it names SMBIOS uuid 00000000-0000-0000-0000-000000000001"},
		{"proxmox://cluster-1/abc", "neither proxmox://<uuid> nor proxmox://<region>/<vmid>"},
		{"proxmox://a/b/123", "neither proxmox://<uuid> nor proxmox://<region>/<vmid>"},
		{"aws:///eu-west-1a/i-0123", "not a Proxmox providerID"},
	}
	for _, tt := range tests {
		t.Run(tt.providerID, func(t *testing.T) {
			g := NewWithT(t)
			err := IdentifiesVM(tt.providerID, ptm)
			if tt.wantErr == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
		})
	}

	// A machine whose VMID is not recorded yet matches no regional providerID.
	g := NewWithT(t)
	g.Expect(IdentifiesVM("proxmox://cluster-1/123", &infrav1.ProxmoxTalosMachine{})).To(MatchError(ContainSubstring("VMID none yet")))
}

// nodeScope is a pass of machine w-0 of cluster ns/c, enough for the node step.
func nodeScope(ptm *infrav1.ProxmoxTalosMachine) *Scope {
	return &Scope{
		Cluster: &clusterv1.Cluster{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"}},
		Machine: &clusterv1.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "w-0"}},
		PTM:     ptm,
	}
}

// oneWorkload hands out one workload client.
type oneWorkload struct{ c client.Client }

func (w oneWorkload) Client(context.Context, client.ObjectKey) (client.Client, error) {
	return w.c, nil
}

// TestWaitForNodeWithCCM drives the node step against a fake workload cluster: it waits
// for a CCM while the Node is tainted uninitialized (and sets no providerID), adopts a
// CCM providerID naming its VMID, and refuses one naming another VM.
func TestWaitForNodeWithCCM(t *testing.T) {
	const uuid = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
	uninitialized := []corev1.Taint{{Key: cloudProviderUninitializedTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule}}
	tests := []struct {
		name           string
		nodeProviderID string
		taints         []corev1.Taint
		wantReason     string
		wantProviderID string // the machine's after the step
		wantNodeID     string // the Node's after the step
		wantEvent      string
	}{
		{"no CCM: the provider sets its own", "", nil, infrav1.NotReadyReason, "proxmox://" + uuid, "proxmox://" + uuid, "ProviderIDSet"},
		{"CCM pending: wait", "", uninitialized, infrav1.WaitingForCloudControllerManagerReason, "proxmox://" + uuid, "", ""},
		{"CCM region/vmid: adopt", "proxmox://region-1/123", nil, infrav1.NotReadyReason, "proxmox://region-1/123", "proxmox://region-1/123", "ProviderIDAdopted"},
		{"CCM capmox uuid: nothing to adopt", "proxmox://" + uuid, nil, infrav1.NotReadyReason, "proxmox://" + uuid, "proxmox://" + uuid, ""},
		{"another VM: refuse", "proxmox://region-1/124", nil, infrav1.ProviderIDMismatchReason, "proxmox://" + uuid, "proxmox://region-1/124", infrav1.ProviderIDMismatchReason},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			s := runtime.NewScheme()
			g.Expect(corev1.AddToScheme(s)).To(Succeed())
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w-0"}, Spec: corev1.NodeSpec{ProviderID: tt.nodeProviderID, Taints: tt.taints}}
			wc := fake.NewClientBuilder().WithScheme(s).WithObjects(node).Build()
			rec := events.NewFakeRecorder(10)
			r := &Reconciler{Workload: oneWorkload{c: wc}, Recorder: rec}
			ptm := &infrav1.ProxmoxTalosMachine{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "w-0"},
				Spec:       infrav1.ProxmoxTalosMachineSpec{SMBIOSUUID: uuid, VMID: ptr.To[int32](123), ProviderID: "proxmox://" + uuid},
			}
			out, err := r.waitForNode(context.Background(), nodeScope(ptm))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(out.done).To(BeFalse()) // the Node is not Ready in any case
			g.Expect(out.res.RequeueAfter).To(BeNumerically(">", 0), "a waiting machine must come back")
			cond := conditions.Get(ptm, infrav1.NodeReadyCondition)
			g.Expect(cond.Reason).To(Equal(tt.wantReason), cond.Message)
			g.Expect(ptm.Spec.ProviderID).To(Equal(tt.wantProviderID))
			var got corev1.Node
			g.Expect(wc.Get(context.Background(), client.ObjectKey{Name: "w-0"}, &got)).To(Succeed())
			g.Expect(got.Spec.ProviderID).To(Equal(tt.wantNodeID))
			var evs []string
			for len(rec.Events) > 0 {
				evs = append(evs, <-rec.Events)
			}
			if tt.wantEvent == "" {
				g.Expect(evs).To(BeEmpty())
			} else {
				g.Expect(evs).To(ContainElement(ContainSubstring(tt.wantEvent)))
			}
		})
	}
}

// unreachableWorkload is a workload cluster whose API server does not answer.
type unreachableWorkload struct{}

func (unreachableWorkload) Client(context.Context, client.ObjectKey) (client.Client, error) {
	return nil, &workload.UnreachableError{Reason: "dial tcp 127.0.0.1:1: connect: connection refused"}
}

// TestWaitForNodeUnreachable: a workload API server that does not answer yet (the usual
// state while the first control plane boots) is waited on with a condition that says so,
// not reported as a reconcile error.
func TestWaitForNodeUnreachable(t *testing.T) {
	g := NewWithT(t)
	r := &Reconciler{Workload: unreachableWorkload{}, Recorder: events.NewFakeRecorder(10)}
	ptm := &infrav1.ProxmoxTalosMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "w-0"}}
	out, err := r.waitForNode(context.Background(), nodeScope(ptm))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out.done).To(BeFalse())
	g.Expect(out.res.RequeueAfter).To(BeNumerically(">", 0))
	cond := conditions.Get(ptm, infrav1.NodeReadyCondition)
	g.Expect(cond.Reason).To(Equal(infrav1.WaitingForNodeReason))
	g.Expect(cond.Message).To(Equal("Waiting for the workload cluster's API server: dial tcp 127.0.0.1:1: connect: connection refused"))
}
