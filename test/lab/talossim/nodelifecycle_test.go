package talossim

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	talosclient "github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// TestNodeLossAndEtcdReplacement walks what a MachineHealthCheck and TalosControlPlane see
// when machines are lost: a stopped control plane's Node turns Ready=Unknown (tainted
// unreachable) after the grace period while its etcd member stays until removed; a
// replacement control plane joins etcd; CACPPT's EtcdRemoveMemberByID through a healthy
// member drops the old one. A worker whose Proxmox node goes offline goes Unknown and its apid
// stops answering; when the node is back the kubelet posts Ready again and the taints go.
func TestNodeLossAndEtcdReplacement(t *testing.T) {
	assets := assetsOrSkip(t)
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	const (
		endpoint = "https://127.10.143.2:6443"
		cp1, cp2 = "127.10.142.1", "127.10.142.2"
		cp3, wk  = "127.10.142.3", "127.10.142.4"
		grace    = 2 * time.Second
	)
	var workerHostDown atomic.Bool
	in, bundle := labInput(t, endpoint)
	sim, err := New(Options{AssetsDir: assets, ArtifactsDir: t.TempDir(), Logf: t.Logf, KubeletReadyDelay: 200 * time.Millisecond,
		NodeMonitorGracePeriod: grace, HeartbeatInterval: 300 * time.Millisecond,
		HostReachable: func(vmid int) bool { return vmid != 304 || !workerHostDown.Load() }})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { g.Expect(sim.Close()).To(Succeed()) }()

	sim.OnPowerOn(powerEvent(t, in, machine.TypeControlPlane, 301, "lab-cp-1", cp1))
	sim.OnPowerOn(powerEvent(t, in, machine.TypeControlPlane, 302, "lab-cp-2", cp2))
	sim.OnPowerOn(powerEvent(t, in, machine.TypeWorker, 304, "lab-worker-1", wk))

	tc, err := in.Talosconfig()
	g.Expect(err).NotTo(HaveOccurred())
	talos := func(addr string) *talosclient.Client {
		c, err := talosclient.New(ctx, talosclient.WithConfig(tc), talosclient.WithEndpoints(addr))
		g.Expect(err).NotTo(HaveOccurred())
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c1 := talos(cp1)
	g.Expect(c1.Bootstrap(talosclient.WithNodes(ctx, cp1), &machineapi.BootstrapRequest{})).To(Succeed())
	members := func() map[string]uint64 {
		resp, err := c1.EtcdMemberList(talosclient.WithNodes(ctx, cp1), &machineapi.EtcdMemberListRequest{})
		g.Expect(err).NotTo(HaveOccurred())
		out := map[string]uint64{}
		for _, m := range resp.Messages[0].Members {
			out[m.Hostname] = m.Id
		}
		return out
	}
	g.Expect(members()).To(HaveLen(2))

	k8sCA, err := parseCA(bundle.Certs.K8s)
	g.Expect(err).NotTo(HaveOccurred())
	admin, err := k8sCA.issue("kubernetes-admin", []string{"system:masters"}, nil, nil)
	g.Expect(err).NotTo(HaveOccurred())
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: endpoint,
		TLSClientConfig: rest.TLSClientConfig{CAData: bundle.Certs.K8s.Crt, CertData: admin.certPEM, KeyData: admin.keyPEM}})
	g.Expect(err).NotTo(HaveOccurred())
	node := func(name string) *corev1.Node {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return n
	}
	readyIs := func(name string, want corev1.ConditionStatus) func(Gomega) {
		return func(g Gomega) {
			n := node(name)
			g.Expect(n).NotTo(BeNil())
			g.Expect(readyCondition(n)).NotTo(BeNil())
			g.Expect(readyCondition(n).Status).To(Equal(want))
			g.Expect(hasUnreachableTaint(n)).To(Equal(want == corev1.ConditionUnknown), "unreachable taint")
		}
	}
	for _, n := range []string{"lab-cp-1", "lab-cp-2", "lab-worker-1"} {
		g.Eventually(readyIs(n, corev1.ConditionTrue), 60*time.Second, 200*time.Millisecond).Should(Succeed())
	}
	// Heartbeats keep a healthy node Ready well past the grace period.
	g.Consistently(readyIs("lab-cp-1", corev1.ConditionTrue), 2*grace, 250*time.Millisecond).Should(Succeed())

	// A control plane's VM stops: its Node goes Unknown only once its last heartbeat is older
	// than the grace period (counted from the last Lease renewal, as the node lifecycle
	// controller counts it, not from the stop), and its etcd member stays (etcd does not drop
	// a member that is merely down).
	sim.OnPowerOff(pvesim.PowerEvent{Node: "pve1", VMID: 302, Name: "lab-cp-2"})
	g.Eventually(readyIs("lab-cp-2", corev1.ConditionUnknown), 10*time.Second, 100*time.Millisecond).Should(Succeed())
	lease, err := cs.CoordinationV1().Leases(nodeLeaseNamespace).Get(ctx, "lab-cp-2", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(time.Since(lease.Spec.RenewTime.Time)).To(BeNumerically(">=", grace), "Unknown before the grace period")
	g.Expect(readyCondition(node("lab-cp-2")).Reason).To(Equal("NodeStatusUnknown"))
	g.Expect(members()).To(HaveKey("lab-cp-2"))

	// The replacement control plane joins etcd; CACPPT then removes the member whose
	// machine is gone through a healthy control plane.
	sim.OnPowerOn(powerEvent(t, in, machine.TypeControlPlane, 303, "lab-cp-3", cp3))
	g.Expect(members()).To(HaveLen(3))
	g.Eventually(readyIs("lab-cp-3", corev1.ConditionTrue), 20*time.Second, 200*time.Millisecond).Should(Succeed())
	err = c1.EtcdRemoveMemberByID(talosclient.WithNodes(ctx, cp1), &machineapi.EtcdRemoveMemberByIDRequest{MemberId: members()["lab-cp-2"]})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(members()).To(SatisfyAll(HaveLen(2), HaveKey("lab-cp-1"), HaveKey("lab-cp-3")))
	g.Expect(sim.EtcdMembers("lab")).To(Equal([]string{"lab-cp-1", "lab-cp-3"}))
	err = c1.EtcdRemoveMemberByID(talosclient.WithNodes(ctx, cp1), &machineapi.EtcdRemoveMemberByIDRequest{MemberId: 42})
	g.Expect(status.Code(err)).To(Equal(codes.NotFound), "a member removed twice: %v", err)

	// The worker's Proxmox node goes offline: no heartbeat, apid times out.
	workerHostDown.Store(true)
	g.Eventually(readyIs("lab-worker-1", corev1.ConditionUnknown), 10*time.Second, 100*time.Millisecond).Should(Succeed())
	_, err = talos(wk).Version(ctx)
	g.Expect(status.Code(err)).To(Equal(codes.Unavailable), "apid of a node on an offline host: %v", err)
	_, err = c1.Version(talosclient.WithNodes(ctx, wk))
	g.Expect(err).To(HaveOccurred(), "proxied through a control plane too")
	// Back online: the kubelet posts Ready again and the node lifecycle controller lifts the taints.
	workerHostDown.Store(false)
	g.Eventually(readyIs("lab-worker-1", corev1.ConditionTrue), 10*time.Second, 100*time.Millisecond).Should(Succeed())
	_, err = talos(wk).Version(ctx)
	g.Expect(err).NotTo(HaveOccurred())
}
