package talossim

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	talosclient "github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/bootstrap"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// inlineManifest lists a namespaced object before its Namespace and a custom resource before
// its CRD: Talos orders namespaces and CRDs first and retries until the kind is served.
const inlineManifest = `apiVersion: v1
kind: ConfigMap
metadata:
  name: from-inline
  namespace: lab-inline
data:
  k: v
---
apiVersion: standin.lab.proxmox-talos.dev/v1
kind: Widget
metadata:
  name: w1
  namespace: lab-inline
spec:
  size: 1
---
apiVersion: v1
kind: Namespace
metadata:
  name: lab-inline
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.standin.lab.proxmox-talos.dev
spec:
  group: standin.lab.proxmox-talos.dev
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

// TestBootstrapAppliesManifests: the bootstrapping control plane's cluster.inlineManifests and
// its loopback cluster.extraManifests (fetched with extraManifestHeaders) land in the workload
// API server; a non-loopback extraManifest is never fetched.
func TestBootstrapAppliesManifests(t *testing.T) {
	assets := assetsOrSkip(t)
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	extra := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Lab-Token") != "t0ken" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		_, _ = w.Write([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-extra\n  namespace: default\n"))
	}))
	defer extra.Close()

	const endpoint, cpAddr = "https://127.10.145.1:6443", "127.10.145.2"
	in, bundle := labInput(t, endpoint)
	cfg, err := in.Config(machine.TypeControlPlane)
	g.Expect(err).NotTo(HaveOccurred())
	patch := "cluster:\n  inlineManifests:\n  - name: lab\n    contents: |\n" + indent(inlineManifest, "      ") +
		"  extraManifests:\n  - " + extra.URL + "/extra.yaml\n  - https://example.invalid/never.yaml\n" +
		"  extraManifestHeaders:\n    X-Lab-Token: t0ken\n"
	patches, err := configpatcher.LoadPatches([]string{patch})
	g.Expect(err).NotTo(HaveOccurred())
	out, err := configpatcher.Apply(configpatcher.WithConfig(cfg), patches)
	g.Expect(err).NotTo(HaveOccurred())
	cfgBytes, err := out.Bytes()
	g.Expect(err).NotTo(HaveOccurred())

	var (
		logMu sync.Mutex
		logs  strings.Builder
	)
	logged := func() string {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.String()
	}
	sim, err := New(Options{AssetsDir: assets, ArtifactsDir: t.TempDir(), KubeletReadyDelay: 300 * time.Millisecond,
		Logf: func(f string, a ...any) {
			t.Logf(f, a...)
			logMu.Lock()
			defer logMu.Unlock()
			logs.WriteString(f + "\n")
		}})
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { g.Expect(sim.Close()).To(Succeed()) }()
	sim.OnPowerOn(cidataEvent(t, 110, "man-cp-1", cpAddr, cfgBytes))
	g.Expect(sim.Refusals()).To(BeEmpty())

	tc, err := in.Talosconfig()
	g.Expect(err).NotTo(HaveOccurred())
	c, err := talosclient.New(ctx, talosclient.WithConfig(tc), talosclient.WithEndpoints(cpAddr))
	g.Expect(err).NotTo(HaveOccurred())
	defer c.Close() //nolint:errcheck
	g.Expect(c.Bootstrap(talosclient.WithNodes(ctx, cpAddr), &machineapi.BootstrapRequest{})).To(Succeed())

	k8sCA, err := parseCA(bundle.Certs.K8s)
	g.Expect(err).NotTo(HaveOccurred())
	admin, err := k8sCA.issue("kubernetes-admin", []string{"system:masters"}, nil, nil)
	g.Expect(err).NotTo(HaveOccurred())
	rc := &rest.Config{Host: endpoint,
		TLSClientConfig: rest.TLSClientConfig{CAData: bundle.Certs.K8s.Crt, CertData: admin.certPEM, KeyData: admin.keyPEM}}
	cs, err := kubernetes.NewForConfig(rc)
	g.Expect(err).NotTo(HaveOccurred())
	dyn, err := dynamic.NewForConfig(rc)
	g.Expect(err).NotTo(HaveOccurred())

	g.Eventually(func(g Gomega) {
		_, err := cs.CoreV1().ConfigMaps("lab-inline").Get(ctx, "from-inline", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		_, err = dyn.Resource(schema.GroupVersionResource{Group: "standin.lab.proxmox-talos.dev", Version: "v1", Resource: "widgets"}).
			Namespace("lab-inline").Get(ctx, "w1", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		_, err = cs.CoreV1().ConfigMaps("default").Get(ctx, "from-extra", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
	}, 2*time.Minute, 500*time.Millisecond).Should(Succeed())
	g.Expect(logged()).To(ContainSubstring("not fetched: the lab only reaches loopback URLs"))

	// Talos creates missing objects and leaves existing ones alone: a change made in the
	// cluster survives a reboot of the control plane.
	cm, err := cs.CoreV1().ConfigMaps("lab-inline").Get(ctx, "from-inline", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	cm.Data["k"] = "changed"
	_, err = cs.CoreV1().ConfigMaps("lab-inline").Update(ctx, cm, metav1.UpdateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cs.CoreV1().ConfigMaps("default").Delete(ctx, "from-extra", metav1.DeleteOptions{})).To(Succeed())
	sim.OnPowerOn(cidataEvent(t, 110, "man-cp-1", cpAddr, cfgBytes)) // reboot
	g.Eventually(func(g Gomega) {
		_, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "from-extra", metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred(), "a deleted bootstrap object is created again")
	}, 2*time.Minute, 500*time.Millisecond).Should(Succeed())
	cm, err = cs.CoreV1().ConfigMaps("lab-inline").Get(ctx, "from-inline", metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cm.Data["k"]).To(Equal("changed"))
	_, err = cs.CoreV1().Namespaces().Get(ctx, "lab-inline", metav1.GetOptions{})
	g.Expect(apierrors.IsNotFound(err)).To(BeFalse())
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// cidataEvent is the power-on of a VM booting userData from a cidata ISO on a plain disk.
func cidataEvent(t *testing.T, vmid int, name, addr string, userData []byte) pvesim.PowerEvent {
	t.Helper()
	g := NewWithT(t)
	meta, err := bootstrap.NoCloudMetaData(bootstrap.MetaData{InstanceID: name, Hostname: name})
	g.Expect(err).NotTo(HaveOccurred())
	netCfg, err := bootstrap.NoCloudNetworkConfig(bootstrap.Network{Interfaces: []bootstrap.Interface{{
		Name: "eth0", MAC: "BC:24:11:00:00:02",
		IPConfig: bootstrap.IPConfig{Addresses: []netip.Prefix{netip.MustParsePrefix(addr + "/8")}},
	}}})
	g.Expect(err).NotTo(HaveOccurred())
	iso, err := bootstrap.CIDataISO(bootstrap.CIData{UserData: userData, MetaData: meta, NetworkConfig: netCfg})
	g.Expect(err).NotTo(HaveOccurred())
	return pvesim.PowerEvent{Node: "pve1", VMID: vmid, Name: name,
		ISOs: []pvesim.AttachedISO{{Slot: "ide2", VolID: "local:iso/cidata.iso", Data: iso}}}
}
