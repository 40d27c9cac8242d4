package talossim

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gstruct"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	talosclient "github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/bootstrap"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// Addresses of this package's tests: distinct from the 127.10.1.x / 127.10.3.x
// the lab orchestration uses, because `go test ./...` runs packages in parallel.
const (
	testEndpoint = "https://127.10.143.1:6443"
	testCPAddr   = "127.10.141.1"
	testWkAddr   = "127.10.141.2"
)

// labInput generates what CABPT would: a secrets bundle and configs for
// cluster "lab", with the version contract CABPT's default Talos version uses.
func labInput(t *testing.T, endpoint string) (*generate.Input, *secrets.Bundle) {
	t.Helper()
	g := NewWithT(t)
	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersion1_11)
	g.Expect(err).NotTo(HaveOccurred())
	in, err := generate.NewInput("lab", endpoint, "1.37.2",
		generate.WithSecretsBundle(bundle), generate.WithVersionContract(config.TalosVersion1_11))
	g.Expect(err).NotTo(HaveOccurred())
	return in, bundle
}

// powerEvent builds the event pvesim fires for a VM booting from a cidata ISO.
func powerEvent(t *testing.T, in *generate.Input, typ machine.Type, vmid int, hostname, addr string) pvesim.PowerEvent {
	t.Helper()
	g := NewWithT(t)
	cfg, err := in.Config(typ)
	g.Expect(err).NotTo(HaveOccurred())
	cfgBytes, err := cfg.Bytes()
	g.Expect(err).NotTo(HaveOccurred())
	userData, err := bootstrap.UserData(cfgBytes)
	g.Expect(err).NotTo(HaveOccurred())
	meta, err := bootstrap.NoCloudMetaData(bootstrap.MetaData{InstanceID: hostname, Hostname: hostname})
	g.Expect(err).NotTo(HaveOccurred())
	netCfg, err := bootstrap.NoCloudNetworkConfig(bootstrap.Network{Interfaces: []bootstrap.Interface{{
		Name: "eth0", MAC: "BC:24:11:00:00:01",
		IPConfig: bootstrap.IPConfig{Addresses: []netip.Prefix{netip.MustParsePrefix(addr + "/8")}},
	}}})
	g.Expect(err).NotTo(HaveOccurred())
	iso, err := bootstrap.CIDataISO(bootstrap.CIData{UserData: userData, MetaData: meta, NetworkConfig: netCfg})
	g.Expect(err).NotTo(HaveOccurred())
	return pvesim.PowerEvent{Node: "pve1", VMID: vmid, Name: hostname,
		ISOs: []pvesim.AttachedISO{{Slot: "ide2", VolID: "local:iso/cidata.iso", Data: iso}}}
}

func assetsOrSkip(t *testing.T) string {
	t.Helper()
	dir := testenv.RequireAssets(t)
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		testenv.SkipOrFail(t, "kube-apiserver not found: %v; %s", err, testenv.HowToGetAssets)
	}
	return dir
}

func dialRefused(addr string) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "50000"), time.Second)
	if err == nil {
		_ = c.Close()
		return false
	}
	return true
}

// TestNodeLifecycleAsCACPPT boots a control plane and a worker, then makes the
// calls CACPPT makes (List, Bootstrap with `nodes` metadata, EtcdMemberList,
// ServiceList, EventsWatchV2) with a talosconfig client, checks the workload
// API with a cluster.ca client certificate, and powers the nodes off.
func TestNodeLifecycleAsCACPPT(t *testing.T) {
	assets := assetsOrSkip(t)
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	in, bundle := labInput(t, testEndpoint)
	sim, err := New(Options{AssetsDir: assets, ArtifactsDir: t.TempDir(), Logf: t.Logf, KubeletReadyDelay: 300 * time.Millisecond})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { g.Expect(sim.Close()).To(Succeed()) }()

	sim.OnPowerOn(powerEvent(t, in, machine.TypeControlPlane, 100, "lab-cp-1", testCPAddr))
	sim.OnPowerOn(powerEvent(t, in, machine.TypeWorker, 101, "lab-worker-1", testWkAddr))
	nodes := sim.Nodes()
	g.Expect(nodes).To(HaveLen(2))
	g.Expect(nodes[0]).To(gstruct.MatchFields(gstruct.IgnoreExtras, gstruct.Fields{
		"Hostname": Equal("lab-cp-1"), "Role": Equal(RoleControlPlane), "APIDListening": BeTrue(),
		"Cluster": Equal("lab"), "Endpoint": Equal(testEndpoint),
	}))
	g.Expect(nodes[1].APIDListening).To(BeTrue(), "worker apid starts with the control plane's OS CA key")

	tc, err := in.Talosconfig()
	g.Expect(err).NotTo(HaveOccurred())
	c, err := talosclient.New(ctx, talosclient.WithConfig(tc), talosclient.WithEndpoints(testCPAddr))
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close() //nolint:errcheck

	memberDirExists := func() bool {
		list, err := c.LS(talosclient.WithNodes(ctx, testCPAddr), &machineapi.ListRequest{Root: "/var/lib/etcd/member"})
		g.Expect(err).NotTo(HaveOccurred())
		found := false
		for {
			info, err := list.Recv()
			if err != nil {
				break
			}
			g.Expect(info.Metadata).NotTo(BeNil())
			if info.Metadata.Error == "" {
				found = true
			}
		}
		return found
	}
	g.Expect(memberDirExists()).To(BeFalse(), "etcd not bootstrapped yet")

	_, err = c.EtcdMemberList(ctx, &machineapi.EtcdMemberListRequest{})
	g.Expect(status.Code(err)).To(Equal(codes.Unavailable))

	g.Expect(c.Bootstrap(talosclient.WithNodes(ctx, testCPAddr), &machineapi.BootstrapRequest{})).To(Succeed())
	err = c.Bootstrap(talosclient.WithNodes(ctx, testCPAddr), &machineapi.BootstrapRequest{})
	g.Expect(status.Code(err)).To(Equal(codes.AlreadyExists), "CACPPT tolerates AlreadyExists: %v", err)
	g.Expect(memberDirExists()).To(BeTrue())

	members, err := c.EtcdMemberList(ctx, &machineapi.EtcdMemberListRequest{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(members.Messages).To(HaveLen(1))
	g.Expect(members.Messages[0].Members).To(HaveLen(1))
	g.Expect(members.Messages[0].Members[0].Hostname).To(Equal("lab-cp-1"))

	svcs, err := c.ServiceInfo(ctx, "etcd")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(svcs).To(HaveLen(1))
	g.Expect(svcs[0].Service.State).To(Equal("Running"))
	g.Expect(svcs[0].Service.GetHealth().GetHealthy()).To(BeTrue())

	// ensureNodesBooted: boot sequence START and STOP within a short watch.
	evCtx, evCancel := context.WithTimeout(ctx, 2*time.Second)
	ch := make(chan talosclient.EventResult)
	g.Expect(c.EventsWatchV2(evCtx, ch, talosclient.WithTailEvents(-1))).To(Succeed())
	var actions []machineapi.SequenceEvent_Action
	for done := false; !done; {
		select {
		case r := <-ch:
			if seq, ok := r.Event.Payload.(*machineapi.SequenceEvent); ok && seq.GetSequence() == "boot" {
				actions = append(actions, seq.GetAction())
				g.Expect(r.Event.Node).To(Equal(testCPAddr))
			}
		case <-evCtx.Done():
			done = true
		}
	}
	evCancel()
	g.Expect(actions).To(Equal([]machineapi.SequenceEvent_Action{machineapi.SequenceEvent_START, machineapi.SequenceEvent_STOP}))

	// The workload API accepts a client certificate from cluster.ca, as CACPPT's kubeconfig.
	k8sCA, err := parseCA(bundle.Certs.K8s)
	g.Expect(err).NotTo(HaveOccurred())
	admin, err := k8sCA.issue("kubernetes-admin", []string{"system:masters"}, nil, nil)
	g.Expect(err).NotTo(HaveOccurred())
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: testEndpoint,
		TLSClientConfig: rest.TLSClientConfig{CAData: bundle.Certs.K8s.Crt, CertData: admin.certPEM, KeyData: admin.keyPEM}})
	g.Expect(err).NotTo(HaveOccurred())

	ready := func(name string) func(Gomega) {
		return func(g Gomega) {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(n.Spec.ProviderID).To(BeEmpty())
			g.Expect(n.Status.Addresses).To(ContainElement(corev1.NodeAddress{Type: corev1.NodeHostName, Address: name}))
			g.Expect(n.Status.Conditions).To(ContainElement(gstruct.MatchFields(gstruct.IgnoreExtras, gstruct.Fields{
				"Type": Equal(corev1.NodeReady), "Status": Equal(corev1.ConditionTrue)})))
			// Cluster API's NodeHealthy also waits for the pressure conditions.
			for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
				g.Expect(n.Status.Conditions).To(ContainElement(gstruct.MatchFields(gstruct.IgnoreExtras, gstruct.Fields{
					"Type": Equal(t), "Status": Equal(corev1.ConditionFalse)})))
			}
			g.Expect(n.Status.NodeInfo.KubeletVersion).To(Equal("v1.37.2"), "the kubelet image tag of the machine config")
		}
	}
	g.Eventually(ready("lab-cp-1"), 60*time.Second, 250*time.Millisecond).Should(Succeed())
	g.Eventually(ready("lab-worker-1"), 10*time.Second, 250*time.Millisecond).Should(Succeed())
	cps, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "node-role.kubernetes.io/control-plane"})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cps.Items).To(HaveLen(1))

	// Power off the worker: apid refused, the Node stays (nothing in a real cluster deletes
	// it but whoever deletes the machine); the control plane keeps answering.
	sim.OnPowerOff(pvesim.PowerEvent{Node: "pve1", VMID: 101, Name: "lab-worker-1"})
	_, err = cs.CoreV1().Nodes().Get(ctx, "lab-worker-1", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred(), "the Node of a stopped VM stays")
	g.Expect(dialRefused(testWkAddr)).To(BeTrue())
	_, err = c.Version(ctx)
	g.Expect(err).NotTo(HaveOccurred())

	// Power off the last node: apid refused and the workload API stops.
	sim.OnPowerOff(pvesim.PowerEvent{Node: "pve1", VMID: 100, Name: "lab-cp-1"})
	g.Expect(dialRefused(testCPAddr)).To(BeTrue())
	g.Expect(sim.Nodes()).To(BeEmpty())
	_, err = net.DialTimeout("tcp", "127.10.143.1:6443", time.Second)
	g.Expect(err).To(HaveOccurred(), "workload API server stopped with the last node")
}

// TestRefusesNonLoopbackAddress: a network-config outside 127.0.0.0/8 must
// not boot (the lab never binds other addresses). 192.0.2.10 is a
// documentation address and is never dialed.
func TestRefusesNonLoopbackAddress(t *testing.T) {
	g := NewWithT(t)
	in, _ := labInput(t, "https://127.10.143.9:6443")
	var logs []string
	sim, err := New(Options{Logf: func(f string, a ...any) { logs = append(logs, f) }})
	g.Expect(err).NotTo(HaveOccurred())
	defer sim.Close() //nolint:errcheck
	sim.OnPowerOn(powerEvent(t, in, machine.TypeControlPlane, 200, "lab-cp-x", "192.0.2.10"))
	g.Expect(sim.Nodes()).To(BeEmpty())
	g.Expect(logs).To(ContainElement(ContainSubstring("not booting")))
}
