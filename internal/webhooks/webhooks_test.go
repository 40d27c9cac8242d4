package webhooks_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

const namespace = "default"

var nameSeq atomic.Int64

func uniqueName(prefix string) string { return fmt.Sprintf("%s-%d", prefix, nameSeq.Add(1)) }

// validCluster is the seed's cluster on loopback addresses: control planes and workers in
// their own pools, the VIP outside both.
// Each has its own Proxmox API host: clusters on one Proxmox API must not share addresses
// (TestClustersOnOneProxmoxAPIDoNotShareAddresses), and these all use the same ones.
func validCluster() *infrav1.ProxmoxTalosCluster {
	name := uniqueName("cluster")
	return &infrav1.ProxmoxTalosCluster{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: infrav1.ProxmoxTalosClusterSpec{
			Proxmox: infrav1.ProxmoxAPI{
				URL:            "https://" + name + ".pve.example.com:8006",
				CredentialsRef: infrav1.SecretReference{Name: "pve-credentials"},
			},
			ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: "127.10.3.1", Port: 6443},
			IPPools: []infrav1.IPPool{
				{Name: "control-plane", Addresses: []string{"127.10.1.1-127.10.1.3"}, Prefix: 16, Gateway: "127.10.0.1", DNSServers: []string{"127.10.0.1"}},
				{Name: "workers", Addresses: []string{"127.10.2.0/31"}, Prefix: 16, Gateway: "127.10.0.1"},
			},
			FailureDomains: []infrav1.FailureDomain{
				{Name: "pve1", Nodes: []string{"pve1"}},
				{Name: "pve2", Nodes: []string{"pve2"}},
				{Name: "pve3", Nodes: []string{"pve3"}, ControlPlane: ptr.To(false)},
			},
			Talos: infrav1.TalosImageSpec{Version: "v1.13.9"},
		},
	}
}

func validMachineSpec() infrav1.ProxmoxTalosMachineSpec {
	return infrav1.ProxmoxTalosMachineSpec{
		MemoryMiB: 4096,
		NetworkDevices: []infrav1.NetworkDevice{
			{Name: "net0", IPv4: &infrav1.AddressSource{FromPool: "control-plane"}},
		},
	}
}

func validMachine() *infrav1.ProxmoxTalosMachine {
	return &infrav1.ProxmoxTalosMachine{
		ObjectMeta: metav1.ObjectMeta{
			Name: uniqueName("machine"), Namespace: namespace,
			Labels: map[string]string{clusterv1.MachineControlPlaneLabel: ""},
		},
		Spec: validMachineSpec(),
	}
}

func validMachineTemplate() *infrav1.ProxmoxTalosMachineTemplate {
	return &infrav1.ProxmoxTalosMachineTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: uniqueName("machinetemplate"), Namespace: namespace},
		Spec: infrav1.ProxmoxTalosMachineTemplateSpec{
			Template: infrav1.ProxmoxTalosMachineTemplateResource{Spec: validMachineSpec()},
		},
	}
}

func validClusterTemplate() *infrav1.ProxmoxTalosClusterTemplate {
	return &infrav1.ProxmoxTalosClusterTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: uniqueName("clustertemplate"), Namespace: namespace},
		Spec: infrav1.ProxmoxTalosClusterTemplateSpec{
			Template: infrav1.ProxmoxTalosClusterTemplateResource{Spec: validCluster().Spec},
		},
	}
}

func TestValidObjectsOfAllKindsAreAcceptedAndDefaulted(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx := context.Background()

	cluster := validCluster()
	g.Expect(k8sClient.Create(ctx, cluster)).To(Succeed())
	g.Expect(cluster.Spec.Talos.FactoryURL).To(Equal(infrav1.DefaultImageFactoryURL))
	g.Expect(cluster.Spec.Talos.Platform).To(Equal(infrav1.TalosPlatformNoCloud))
	g.Expect(cluster.Spec.Talos.Extensions).To(Equal(infrav1.DefaultExtensions))
	g.Expect(cluster.Spec.ImageTransfer).To(Equal(infrav1.ImageTransferDownload))
	g.Expect(cluster.Spec.ImageStorage).To(Equal("local"))
	g.Expect(*cluster.Spec.FailureDomains[0].ControlPlane).To(BeTrue())
	g.Expect(*cluster.Spec.FailureDomains[2].ControlPlane).To(BeFalse())

	machine := validMachine()
	g.Expect(k8sClient.Create(ctx, machine)).To(Succeed())
	g.Expect(machine.Spec.Cores).To(Equal(int32(infrav1.DefaultCores)))
	g.Expect(machine.Spec.Firmware).To(Equal(infrav1.FirmwareOVMF))
	g.Expect(machine.Spec.MachineType).To(Equal(infrav1.MachineTypeQ35))
	g.Expect(machine.Spec.BootDisk.SizeGiB).To(Equal(int32(infrav1.DefaultBootDiskSizeGiB)))
	g.Expect(machine.Spec.NetworkDevices[0].Bridge).To(Equal("vmbr0"))
	g.Expect(*machine.Spec.BalloonMiB).To(BeZero())

	g.Expect(k8sClient.Create(ctx, validMachineTemplate())).To(Succeed())
	g.Expect(k8sClient.Create(ctx, validClusterTemplate())).To(Succeed())

	// The endpoint may instead come from a pool.
	fromPool := validCluster()
	fromPool.Spec.ControlPlaneEndpoint.Host = ""
	fromPool.Spec.ControlPlaneEndpointPool = "vip"
	fromPool.Spec.IPPools = append(fromPool.Spec.IPPools, infrav1.IPPool{Name: "vip", Addresses: []string{"127.10.3.1"}, Prefix: 16})
	g.Expect(k8sClient.Create(ctx, fromPool)).To(Succeed())
	g.Expect(fromPool.Spec.ControlPlaneEndpoint.Port).To(Equal(int32(6443)))

	// Or from a Cluster API IPAM pool.
	fromIPAM := validCluster()
	fromIPAM.Spec.ControlPlaneEndpoint.Host = ""
	fromIPAM.Spec.ControlPlaneEndpointIPAMPoolRef = &ipamv1.IPPoolReference{APIGroup: "ipam.cluster.x-k8s.io", Kind: "InClusterIPPool", Name: "vips"}
	g.Expect(k8sClient.Create(ctx, fromIPAM)).To(Succeed())

	// A fixed VIP inside a node pool is accepted: the controller reserves it in the pool.
	vipInPool := validCluster()
	vipInPool.Spec.ControlPlaneEndpoint.Host = "127.10.1.2"
	g.Expect(k8sClient.Create(ctx, vipInPool)).To(Succeed())

	// http only with the explicit opt-in next to the URL, and with a warning.
	insecure := validCluster()
	insecure.Spec.Proxmox.URL = "http://127.0.0.1:8006"
	insecure.Spec.Proxmox.InsecureAllowHTTP = true
	insecure.Spec.Talos.FactoryURL = "http://127.0.0.1:8080"
	insecure.Spec.Talos.InsecureAllowHTTP = true
	g.Expect(k8sClient.Create(ctx, insecure)).To(Succeed())
	m := validMachine()
	m.Spec.Talos = &infrav1.TalosImageSpec{FactoryURL: "http://127.0.0.1:8080", InsecureAllowHTTP: true}
	g.Expect(k8sClient.Create(ctx, m)).To(Succeed())
}

// rejected asserts that the API server refuses obj and that the message carries want.
func rejected(t *testing.T, err error, want string) {
	t.Helper()
	g := NewWithT(t)
	g.Expect(err).To(HaveOccurred(), "the object was accepted, expected a rejection mentioning %q", want)
	g.Expect(apierrors.IsInvalid(err) || apierrors.IsForbidden(err) || apierrors.IsBadRequest(err)).To(BeTrue(), "unexpected error type: %v", err)
	g.Expect(err.Error()).To(ContainSubstring(want))
}

func TestClusterValidationRules(t *testing.T) {
	requireEnv(t)
	cases := []struct {
		name   string
		mutate func(*infrav1.ProxmoxTalosClusterSpec)
		want   string
	}{
		{"URL already ending in /api2/json", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Proxmox.URL = "https://pve.example.com:8006/api2/json" }, "must not end in /api2/json"},
		{"URL with another path", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Proxmox.URL = "https://pve.example.com:8006/pve" }, "must not have a path"},
		{"plain http URL", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Proxmox.URL = "http://pve.example.com:8006" }, "must use https: the Proxmox VE API is only served over TLS, and over http the API token would travel unencrypted (set spec.proxmox.insecureAllowHTTP: true"},
		{"http URL with the factory's opt-in only", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.Proxmox.URL = "http://pve.example.com:8006"
			s.Talos.InsecureAllowHTTP = true
		}, "spec.proxmox.url: Invalid value"},
		{"http factory URL without the opt-in", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.FactoryURL = "http://factory.example.com" }, "spec.talos.factoryURL: Invalid value: \"http://factory.example.com\": must use https: over http nothing proves the images and schematics come from the factory"},
		{"http factory URL with the Proxmox opt-in only", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.Talos.FactoryURL = "http://factory.example.com"
			s.Proxmox.InsecureAllowHTTP = true
		}, "spec.talos.factoryURL: Invalid value"},
		{"URL that is not absolute", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Proxmox.URL = "pve.example.com" }, "must be an absolute URL"},
		{"credentials in the URL", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Proxmox.URL = "https://root:pw@pve.example.com:8006" }, "must not carry a query or user information"},
		{"bad CIDR", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[1].Addresses = []string{"127.10.2.0/33"} }, "is not a valid CIDR"},
		{"bad range", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[1].Addresses = []string{"127.10.2.1-banana"} }, "is not an IP address, a range"},
		{"inverted range", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[1].Addresses = []string{"127.10.2.9-127.10.2.1"} }, "is inverted"},
		{"not an address", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[1].Addresses = []string{"node-1"} }, "is not an IP address, a range"},
		{"mixed families in a pool", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.IPPools[1].Addresses = []string{"127.10.2.1", "fd00::1"}
		}, "mixes IPv4 and IPv6"},
		{"prefix too long for IPv4", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[1].Prefix = 64 }, "must be at most 32"},
		{"address outside the pool's prefix", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.IPPools[1].Addresses = []string{"127.10.2.1", "127.11.2.1"}
		}, "lies outside 127.10.0.0/16"},
		{"gateway outside the prefix", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[0].Gateway = "127.20.0.1" }, "is outside the pool's network"},
		{"gateway inside the pool", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[0].Gateway = "127.10.1.2" }, "is one of the pool's own addresses"},
		{"gateway of the wrong family", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[0].Gateway = "fd00::1" }, "is not of the pool's address family"},
		{"DNS server not an address", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[0].DNSServers = []string{"dns.example.com"} }, "is not an IP address"},
		{"overlapping pools", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[1].Addresses = []string{"127.10.1.3-127.10.1.9"} }, `overlaps pool "control-plane"`},
		{"endpoint from a cluster pool and an IPAM pool", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.ControlPlaneEndpoint.Host = ""
			s.ControlPlaneEndpointPool = "control-plane"
			s.ControlPlaneEndpointIPAMPoolRef = &ipamv1.IPPoolReference{APIGroup: "ipam.cluster.x-k8s.io", Kind: "InClusterIPPool", Name: "vips"}
		}, "set either controlPlaneEndpointPool or controlPlaneEndpointIPAMPoolRef, not both"},
		{"endpoint IPAM pool without API group", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.ControlPlaneEndpoint.Host = ""
			s.ControlPlaneEndpointIPAMPoolRef = &ipamv1.IPPoolReference{Kind: "InClusterIPPool", Name: "vips"}
		}, "spec.controlPlaneEndpointIPAMPoolRef.apiGroup"},
		{"no endpoint and no endpoint pool", func(s *infrav1.ProxmoxTalosClusterSpec) { s.ControlPlaneEndpoint.Host = "" }, "set the control-plane endpoint"},
		{"endpoint pool that does not exist", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.ControlPlaneEndpoint.Host = ""
			s.ControlPlaneEndpointPool = "vips"
		}, "names no entry of spec.ipPools"},
		{"endpoint outside its pool", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.ControlPlaneEndpointPool = "vip"
			s.IPPools = append(s.IPPools, infrav1.IPPool{Name: "vip", Addresses: []string{"127.10.3.5"}, Prefix: 16})
		}, `is not in controlPlaneEndpointPool "vip"`},
		{"endpoint host that is neither IP nor DNS name", func(s *infrav1.ProxmoxTalosClusterSpec) { s.ControlPlaneEndpoint.Host = "Not_A_Host" }, "must be an IP address or a DNS name"},
		{"endpoint port out of range", func(s *infrav1.ProxmoxTalosClusterSpec) { s.ControlPlaneEndpoint.Port = 70000 }, "spec.controlPlaneEndpoint.port"},
		{"node in two failure domains", func(s *infrav1.ProxmoxTalosClusterSpec) { s.FailureDomains[1].Nodes = []string{"pve1"} }, `is already in failure domain "pve1"`},
		{"missing Talos version", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.Version = "" }, "set the Talos version"},
		{"malformed Talos version", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.Version = "1.13" }, "must be a Talos release such as v1.13.9"},
		{"unknown platform", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.Platform = "azure" }, `spec.talos.platform: Unsupported value: "azure"`},
		{"unknown architecture", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.Architecture = "riscv64" }, `spec.talos.architecture: Unsupported value: "riscv64"`},
		{"unknown transfer mode", func(s *infrav1.ProxmoxTalosClusterSpec) { s.ImageTransfer = "Carrier" }, `spec.imageTransfer: Unsupported value: "Carrier"`},
		{"factory URL with a path", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.FactoryURL = "https://factory.talos.dev/image" }, "must be the factory's base URL without a path"},
		{"factory URL that is not http(s)", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.FactoryURL = "ftp://factory" }, "must be an https URL"},
		{"bad extension name", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.Extensions = []string{"qemu guest agent"} }, "must be an official extension name"},
		{"duplicate extension", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.Talos.Extensions = []string{"siderolabs/tailscale", "siderolabs/tailscale"}
		}, "Duplicate value"},
		{"kernel argument with whitespace", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Talos.ExtraKernelArgs = []string{"a=1 b=2"} }, "must be a single kernel argument"},
		{"pool name that is not a DNS label", func(s *infrav1.ProxmoxTalosClusterSpec) { s.IPPools[1].Name = "Workers!" }, "spec.ipPools[1].name"},
		{"failure domain without nodes", func(s *infrav1.ProxmoxTalosClusterSpec) { s.FailureDomains[0].Nodes = nil }, "spec.failureDomains[0].nodes"},
		{"missing credentials Secret name", func(s *infrav1.ProxmoxTalosClusterSpec) { s.Proxmox.CredentialsRef.Name = "" }, "spec.proxmox.credentialsRef.name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validCluster()
			tc.mutate(&c.Spec)
			rejected(t, k8sClient.Create(context.Background(), c), tc.want)
		})
	}
}

// TestClustersOnOneProxmoxAPIDoNotShareAddresses: a second cluster on the same Proxmox API
// may not hand out an address the first one can (overlapping pools, a VIP in the other's
// pool, the same VIP); the message names the other cluster. Updates that do not touch
// addresses are not compared, so clusters that predate the rule stay editable.
func TestClustersOnOneProxmoxAPIDoNotShareAddresses(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	first := validCluster()
	first.Namespace = "kube-public" // other namespaces count: a namespace bounds no network
	g.Expect(k8sClient.Create(ctx, first)).To(Succeed())
	url := first.Spec.Proxmox.URL
	who := "ProxmoxTalosCluster kube-public/" + first.Name

	cases := []struct {
		name   string
		mutate func(*infrav1.ProxmoxTalosClusterSpec)
		want   string
	}{
		{"overlapping pool", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.IPPools = s.IPPools[:1]
			s.IPPools[0].Addresses = []string{"127.10.1.3-127.10.1.9"}
			s.ControlPlaneEndpoint.Host = "127.10.3.9"
		}, `spec.ipPools[0].addresses: Invalid value: ["127.10.1.3-127.10.1.9"]: overlaps pool "control-plane" of ` + who + `, which uses the same Proxmox API`},
		{"VIP inside the other cluster's pool", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.IPPools = []infrav1.IPPool{{Name: "nodes", Addresses: []string{"127.10.5.1-127.10.5.9"}, Prefix: 16}}
			s.ControlPlaneEndpoint.Host = "127.10.2.1"
		}, `spec.controlPlaneEndpoint.host: Invalid value: "127.10.2.1": lies inside pool "workers" of ` + who},
		{"pool containing the other cluster's VIP", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.IPPools = []infrav1.IPPool{{Name: "nodes", Addresses: []string{"127.10.3.0/30"}, Prefix: 16}}
			s.ControlPlaneEndpoint.Host = "127.10.3.9"
		}, "contains 127.10.3.1, the control-plane endpoint of " + who},
		{"same VIP", func(s *infrav1.ProxmoxTalosClusterSpec) {
			s.IPPools = []infrav1.IPPool{{Name: "nodes", Addresses: []string{"127.10.5.1-127.10.5.9"}, Prefix: 16}}
		}, `spec.controlPlaneEndpoint.host: Invalid value: "127.10.3.1": is already the control-plane endpoint of ` + who},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validCluster()
			c.Spec.Proxmox.URL = url
			tc.mutate(&c.Spec)
			rejected(t, k8sClient.Create(ctx, c), tc.want)
		})
	}

	// Disjoint addresses on the same Proxmox API are fine.
	second := validCluster()
	second.Spec.Proxmox.URL = url
	second.Spec.IPPools = []infrav1.IPPool{{Name: "nodes", Addresses: []string{"127.10.5.1-127.10.5.9"}, Prefix: 16}}
	second.Spec.ControlPlaneEndpoint.Host = "127.10.3.9"
	g.Expect(k8sClient.Create(ctx, second)).To(Succeed())

	// Growing a pool into the other cluster's is refused on update too...
	second.Spec.IPPools[0].Addresses = []string{"127.10.1.1-127.10.1.1"}
	rejected(t, k8sClient.Update(ctx, second), `overlaps pool "control-plane" of `+who)
	// ...while other changes are not compared.
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(second), second)).To(Succeed())
	second.Spec.Talos.Version = "v1.13.10"
	g.Expect(k8sClient.Update(ctx, second)).To(Succeed())
}

func TestClusterEndpointIsWriteOnce(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx := context.Background()
	c := validCluster()
	g.Expect(k8sClient.Create(ctx, c)).To(Succeed())
	c.Spec.ControlPlaneEndpoint.Host = "127.10.3.2"
	rejected(t, k8sClient.Update(ctx, c), "controlPlaneEndpoint.host cannot be changed once set")

	// Other fields stay mutable, as a ClusterClass patches the cluster in place.
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(c), c)).To(Succeed())
	c.Spec.Talos.Version = "v1.13.10"
	g.Expect(k8sClient.Update(ctx, c)).To(Succeed())

	// An endpoint allocated from a pool may be written once.
	p := validCluster()
	p.Spec.ControlPlaneEndpoint.Host = ""
	p.Spec.ControlPlaneEndpointPool = "vip"
	p.Spec.IPPools = append(p.Spec.IPPools, infrav1.IPPool{Name: "vip", Addresses: []string{"127.10.3.1-127.10.3.2"}, Prefix: 16})
	g.Expect(k8sClient.Create(ctx, p)).To(Succeed())
	p.Spec.ControlPlaneEndpoint.Host = "127.10.3.1"
	g.Expect(k8sClient.Update(ctx, p)).To(Succeed())
}

func TestMachineValidationRules(t *testing.T) {
	requireEnv(t)
	cases := []struct {
		name         string
		controlPlane bool
		mutate       func(*infrav1.ProxmoxTalosMachineSpec)
		want         string
	}{
		{"control plane below 2 GiB", true, func(s *infrav1.ProxmoxTalosMachineSpec) { s.MemoryMiB = 1536 }, "a Talos control-plane node needs at least 2048 MiB"},
		{"worker below 1 GiB", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.MemoryMiB = 512 }, "spec.memoryMiB: Invalid value: 512: spec.memoryMiB in body should be greater than or equal to 1024"},
		{"balloon above memory", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.BalloonMiB = ptr.To[int32](8192) }, "must not exceed memoryMiB"},
		{"inverted VMID range", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.VMIDRange = &infrav1.VMIDRange{Start: 900, End: 800} }, "vmidRange.start must not be greater than vmidRange.end"},
		{"VMID range below 100", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.VMIDRange = &infrav1.VMIDRange{Start: 10, End: 800} }, "spec.vmIDRange.start"},
		{"VMID outside its range", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.VMIDRange = &infrav1.VMIDRange{Start: 800, End: 900}
			s.VMID = ptr.To[int32](901)
		}, "is outside vmIDRange 800-900"},
		{"duplicate NIC names", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.NetworkDevices = append(s.NetworkDevices, infrav1.NetworkDevice{Name: "net0"})
		}, `spec.networkDevices[1]: Duplicate value: {"name":"net0"}`},
		{"NIC name that is not a Proxmox device", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.NetworkDevices[0].Name = "eth0" }, "spec.networkDevices[0].name"},
		{"unknown NIC model", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.NetworkDevices[0].Model = "ne2000" }, `Unsupported value: "ne2000"`},
		{"VLAN out of range", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.NetworkDevices[0].VLAN = ptr.To[int32](5000) }, "spec.networkDevices[0].vlan"},
		{"MTU too small", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.NetworkDevices[0].MTU = ptr.To[int32](100) }, "spec.networkDevices[0].mtu"},
		{"two address sources", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.NetworkDevices[0].IPv4.DHCP = ptr.To(true) }, "spec.networkDevices[0].ipv4"},
		{"no address source", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.NetworkDevices[0].IPv4 = &infrav1.AddressSource{} }, "spec.networkDevices[0].ipv4"},
		{"dhcp: false as the only source", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.NetworkDevices[0].IPv4 = &infrav1.AddressSource{DHCP: ptr.To(false)}
		}, "set exactly one of fromPool, ipamPoolRef or dhcp: true"},
		{"IPAM pool without API group", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.NetworkDevices[0].IPv4 = &infrav1.AddressSource{IPAMPoolRef: &ipamv1.IPPoolReference{Kind: "InClusterIPPool", Name: "nodes"}}
		}, "spec.networkDevices[0].ipv4.ipamPoolRef.apiGroup: Required value"},
		{"extra disk without storage", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.ExtraDisks = []infrav1.ExtraDisk{{Device: "scsi1", Disk: infrav1.Disk{SizeGiB: 10}}}
		}, "name the Proxmox storage for the extra disk"},
		{"extra disk without size", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.ExtraDisks = []infrav1.ExtraDisk{{Device: "scsi1", Disk: infrav1.Disk{Storage: "local-lvm"}}}
		}, "give the extra disk's size in GiB"},
		{"extra disk on the boot slot", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.ExtraDisks = []infrav1.ExtraDisk{{Device: "scsi0", Disk: infrav1.Disk{Storage: "local-lvm", SizeGiB: 10}}}
		}, "spec.extraDisks[0].device"},
		{"unknown disk cache mode", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.BootDisk.Cache = "fast" }, `Unsupported value: "fast"`},
		{"pinned node not allowed", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.AllowedNodes = []string{"pve1", "pve2"}
			s.Node = "pve3"
		}, "is not one of allowedNodes"},
		{"tag Proxmox refuses", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.Tags = []string{"has space"} }, "spec.tags[0]"},
		{"unknown firmware", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.Firmware = "CoreBoot" }, `Unsupported value: "CoreBoot"`},
		{"unknown machine type", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.MachineType = "virt" }, `Unsupported value: "virt"`},
		{"http factory URL without the opt-in", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.Talos = &infrav1.TalosImageSpec{FactoryURL: "http://factory.example.com"}
		}, "spec.talos.factoryURL: Invalid value: \"http://factory.example.com\": must use https"},
		{"malformed SMBIOS uuid", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.SMBIOSUUID = "not-a-uuid" }, "spec.smbiosUUID"},
		{"malformed recorded address", false, func(s *infrav1.ProxmoxTalosMachineSpec) {
			s.IPAddresses = []infrav1.AllocatedAddress{{Device: "net0", Address: "127.10.1.1"}}
		}, "must be an address with its prefix length"},
		{"malformed Talos override version", false, func(s *infrav1.ProxmoxTalosMachineSpec) { s.Talos = &infrav1.TalosImageSpec{Version: "latest"} }, "must be a Talos release such as v1.13.9"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := validMachine()
			if !tc.controlPlane {
				m.Labels = nil
			}
			tc.mutate(&m.Spec)
			rejected(t, k8sClient.Create(context.Background(), m), tc.want)
		})
	}
}

func TestMachineIdentityIsWriteOnceAndSpecImmutable(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx := context.Background()
	m := validMachine()
	g.Expect(k8sClient.Create(ctx, m)).To(Succeed())

	// Until the VM is provisioned the VMID may change (another tool took it first)...
	m.Spec.VMID = ptr.To[int32](4241)
	g.Expect(k8sClient.Update(ctx, m)).To(Succeed())
	m.Spec.VMID = nil
	g.Expect(k8sClient.Update(ctx, m)).To(Succeed())

	// The node is a placement decision until a VMID is recorded...
	m.Spec.Node = "pve1"
	g.Expect(k8sClient.Update(ctx, m)).To(Succeed())
	elsewhere := m.DeepCopy()
	elsewhere.Spec.Node = "pve2"
	rejected(t, k8sClient.Update(ctx, elsewhere), "node is immutable until a vmID is recorded")

	// ...then the controller records the VM's identity once...
	m.Spec.Node = "pve1"
	m.Spec.VMID = ptr.To[int32](4242)
	m.Spec.SMBIOSUUID = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
	m.Spec.ProviderID = "proxmox://6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
	m.Spec.IPAddresses = []infrav1.AllocatedAddress{{Device: "net0", Address: "127.10.1.1/16", Gateway: "127.10.0.1", Pool: "control-plane"}}
	g.Expect(k8sClient.Update(ctx, m)).To(Succeed())

	// ...and nobody may change it afterwards.
	changes := []struct {
		name   string
		mutate func(*infrav1.ProxmoxTalosMachineSpec)
		want   string
	}{
		{"vmID", func(s *infrav1.ProxmoxTalosMachineSpec) { s.VMID = ptr.To[int32](4243) }, "vmID is immutable once the VM is provisioned"},
		{"vmID removed", func(s *infrav1.ProxmoxTalosMachineSpec) { s.VMID = nil }, "vmID is immutable once the VM is provisioned"},
		{"smbiosUUID", func(s *infrav1.ProxmoxTalosMachineSpec) { s.SMBIOSUUID = "00000000-0000-4000-8000-000000000000" }, "smbiosUUID is immutable once set"},
		{"providerID", func(s *infrav1.ProxmoxTalosMachineSpec) { s.ProviderID = "proxmox://other" }, "providerID is immutable once set"},
		{"hardware", func(s *infrav1.ProxmoxTalosMachineSpec) { s.Cores = 8 }, "ProxmoxTalosMachine spec is immutable once created"},
	}
	for _, tc := range changes {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			current := &infrav1.ProxmoxTalosMachine{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), current)).To(Succeed())
			tc.mutate(&current.Spec)
			rejected(t, k8sClient.Update(ctx, current), tc.want)
		})
	}

	// The node is where the VM is, not who it is: once the VM exists the controller
	// records where it moved (migration, HA).
	current := &infrav1.ProxmoxTalosMachine{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(m), current)).To(Succeed())
	current.Spec.Node = "pve2"
	g.Expect(k8sClient.Update(ctx, current)).To(Succeed())
}

func TestMachineTemplateValidationAndImmutability(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx := context.Background()

	bad := validMachineTemplate()
	bad.Spec.Template.Spec.NetworkDevices[0].IPv4 = &infrav1.AddressSource{DHCP: ptr.To(false)}
	rejected(t, k8sClient.Create(ctx, bad), "spec.template.spec.networkDevices[0].ipv4")

	badMeta := validMachineTemplate()
	badMeta.Spec.Template.ObjectMeta.Labels = map[string]string{"not a label": "x"}
	rejected(t, k8sClient.Create(ctx, badMeta), "spec.template.metadata.labels")

	tmpl := validMachineTemplate()
	g.Expect(k8sClient.Create(ctx, tmpl)).To(Succeed())

	changed := tmpl.DeepCopy()
	changed.Spec.Template.Spec.Cores = 8
	rejected(t, k8sClient.Update(ctx, changed), "ProxmoxTalosMachineTemplate spec.template.spec is immutable")

	// The topology controller's server-side dry-run (annotated) may change it: it only
	// compares desired and current, nothing is persisted.
	dryRun := tmpl.DeepCopy()
	dryRun.Spec.Template.Spec.Cores = 8
	dryRun.Annotations = map[string]string{clusterv1.TopologyDryRunAnnotation: ""}
	g.Expect(k8sClient.Update(ctx, dryRun, client.DryRunAll)).To(Succeed())
	stored := &infrav1.ProxmoxTalosMachineTemplate{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(tmpl), stored)).To(Succeed())
	g.Expect(stored.Spec.Template.Spec.Cores).To(Equal(int32(infrav1.DefaultCores)))

	// A dry-run without the annotation is an ordinary request and is refused.
	plainDryRun := tmpl.DeepCopy()
	plainDryRun.Spec.Template.Spec.Cores = 8
	rejected(t, k8sClient.Update(ctx, plainDryRun, client.DryRunAll), "is immutable")

	// Metadata changes are fine.
	meta := stored.DeepCopy()
	meta.Labels = map[string]string{"team": "platform"}
	g.Expect(k8sClient.Update(ctx, meta)).To(Succeed())
}

func TestClusterTemplateValidationAndImmutability(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx := context.Background()

	bad := validClusterTemplate()
	bad.Spec.Template.Spec.IPPools[1].Gateway = "127.99.0.1"
	rejected(t, k8sClient.Create(ctx, bad), "spec.template.spec.ipPools[1].gateway")

	// A ClusterClass may leave the endpoint to a per-cluster patch.
	noEndpoint := validClusterTemplate()
	noEndpoint.Spec.Template.Spec.ControlPlaneEndpoint.Host = ""
	g.Expect(k8sClient.Create(ctx, noEndpoint)).To(Succeed())

	tmpl := validClusterTemplate()
	g.Expect(k8sClient.Create(ctx, tmpl)).To(Succeed())
	changed := tmpl.DeepCopy()
	changed.Spec.Template.Spec.Talos.Version = "v1.14.0"
	rejected(t, k8sClient.Update(ctx, changed), "ProxmoxTalosClusterTemplate spec.template.spec is immutable")

	dryRun := tmpl.DeepCopy()
	dryRun.Spec.Template.Spec.Talos.Version = "v1.14.0"
	dryRun.Annotations = map[string]string{clusterv1.TopologyDryRunAnnotation: ""}
	g.Expect(k8sClient.Update(ctx, dryRun, client.DryRunAll)).To(Succeed())
}
