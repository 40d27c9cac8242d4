// Package clusterclass proves, against a real API server (envtest), that Cluster API's own
// ClusterClass and topology controllers (v1.14.2, in process) drive this provider's
// ClusterClass templates/clusterclass-proxmox-talos.yaml: a Talos control plane through the
// optional TalosControlPlaneTemplate CRD (config/optional/taloscontrolplanetemplate), workers
// through CABPT's TalosConfigTemplate. No CACPPT, CABPT or provider controller runs: the test
// plays CACPPT's part by writing TalosControlPlane status. See docs/clusterclass.md.
package clusterclass

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	runtimev1 "sigs.k8s.io/cluster-api/api/runtime/v1beta2"
	"sigs.k8s.io/cluster-api/controllers/clustercache"
	ccreconciler "sigs.k8s.io/cluster-api/core/reconcilers/clusterclass"
	topologyreconciler "sigs.k8s.io/cluster-api/core/reconcilers/topology/cluster"
	"sigs.k8s.io/cluster-api/core/setup"
	"sigs.k8s.io/cluster-api/feature"
	"sigs.k8s.io/cluster-api/util/index"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/webhooks"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

const (
	ns          = "cc-test"
	clusterName = "topo"
	className   = "proxmox-talos"
	v1          = "v1.35.2"
	v2          = "v1.36.1"
)

var (
	tcpGVK  = clusterv1.GroupVersion.WithKind("TalosControlPlane")
	tctGVK  = clusterv1.GroupVersion.WithKind("TalosConfigTemplate")
	ptmtGVK = infrav1.GroupVersion.WithKind("ProxmoxTalosMachineTemplate")
)

func init() {
	tcpGVK.Group, tcpGVK.Version = "controlplane.cluster.x-k8s.io", "v1alpha3"
	tctGVK.Group, tctGVK.Version = "bootstrap.cluster.x-k8s.io", "v1alpha3"
}

// labDir is a hack/lab-binaries.sh cache directory; the test skips without it (fails under CI).
func labDir(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("bash", filepath.Join(testenv.RepoRoot(), "hack", "lab-binaries.sh"), "--dir", name).Output()
	if err != nil {
		t.Fatalf("hack/lab-binaries.sh --dir %s: %v", name, err)
	}
	dir := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(dir, "config", "crd", "bases")); err != nil {
		msg := fmt.Sprintf("%s CRDs not cached in %s: run hack/lab-binaries.sh", name, dir)
		testenv.SkipOrFail(t, "%s", msg)
	}
	return dir
}

// loadCRDs reads every CRD of dir and adds labels: the kustomize layers that add the contract
// labels (ours and CABPT's/CACPPT's config/crd/kustomization.yaml) are not in the bases, and
// Cluster API resolves each template's contract from them.
func loadCRDs(t *testing.T, dir string, labels map[string]string) []*apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if len(files) == 0 {
		t.Fatalf("no CRDs in %s", dir)
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range splitYAML(t, raw) {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := yaml.Unmarshal(doc, crd); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if crd.Kind != "CustomResourceDefinition" {
				continue
			}
			if crd.Labels == nil {
				crd.Labels = map[string]string{}
			}
			for k, v := range labels {
				crd.Labels[k] = v
			}
			crds = append(crds, crd)
		}
	}
	return crds
}

func splitYAML(t *testing.T, raw []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) > 0 && !bytes.Equal(bytes.TrimSpace(doc), []byte("---")) {
			docs = append(docs, doc)
		}
	}
}

// start runs envtest with our, CAPI's, CABPT's, CACPPT's and the shim CRDs, and a manager with
// CAPI's ClusterClass and topology reconcilers.
func start(t *testing.T) client.Client {
	t.Helper()
	assets := testenv.RequireAssets(t)
	cabpt, cacppt := labDir(t, "cabpt"), labDir(t, "cacppt")
	capi, err := testenv.ModuleDir("sigs.k8s.io/cluster-api")
	if err != nil {
		t.Fatal(err)
	}
	root := testenv.RepoRoot()
	v1alpha3 := map[string]string{"cluster.x-k8s.io/v1beta1": "v1alpha3"}
	var crds []*apiextensionsv1.CustomResourceDefinition
	crds = append(crds, loadCRDs(t, filepath.Join(root, "config", "crd", "bases"), map[string]string{"cluster.x-k8s.io/v1beta2": "v1beta1"})...)
	crds = append(crds, loadCRDs(t, filepath.Join(capi, "core", "config", "crd", "bases"), nil)...)
	crds = append(crds, loadCRDs(t, filepath.Join(cabpt, "config", "crd", "bases"), v1alpha3)...)
	crds = append(crds, loadCRDs(t, filepath.Join(cacppt, "config", "crd", "bases"), v1alpha3)...)
	// The shim carries its contract label itself (no labels added), as it is shipped.
	crds = append(crds, loadCRDs(t, filepath.Join(root, "config", "optional", "taloscontrolplanetemplate"), nil)...)

	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDInstallOptions:     envtest.CRDInstallOptions{CRDs: crds},
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })

	// The topology controllers refuse to run without the ClusterTopology feature gate (alpha,
	// off by default), as CAPI's manager would with --feature-gates=ClusterTopology=true.
	// RuntimeSDK stays off, so no RuntimeClient is needed.
	if err := feature.MutableGates.Set("ClusterTopology=true"); err != nil {
		t.Fatal(err)
	}

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, clusterv1.AddToScheme, runtimev1.AddToScheme, apiextensionsv1.AddToScheme, infrav1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	// The controllers' logs only with TEST_VERBOSE_LOGS (the logger can be set once).
	if os.Getenv("TEST_VERBOSE_LOGS") != "" {
		log.SetLogger(zap.New(zap.UseDevMode(true)))
	} else {
		log.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  setup.ManagerCacheOptions(scheme, "clusterclass-test", "", 10*time.Minute),
		Client:                 setup.ManagerClientOptions(),
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := index.AddDefaultIndexes(ctx, mgr); err != nil {
		t.Fatal(err)
	}
	secretClient, err := setup.CreateSecretCachingClient(mgr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := clustercache.SetupWithManager(ctx, mgr, clustercache.Options{
		SecretClient: secretClient,
		Cache:        setup.ClusterCacheCacheOptions(),
		Client:       setup.ClusterCacheClientOptions("clusterclass-test", 20, 30),
	}, controller.Options{MaxConcurrentReconciles: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&ccreconciler.Reconciler{Client: mgr.GetClient()}).SetupWithManager(ctx, mgr, controller.Options{MaxConcurrentReconciles: 1}); err != nil {
		t.Fatal(err)
	}
	if err := (&topologyreconciler.Reconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		ClusterCache: cc,
	}).SetupWithManager(ctx, mgr, controller.Options{MaxConcurrentReconciles: 1}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// applyClass creates the objects of templates/clusterclass-proxmox-talos.yaml in ns, the way
// clusterctl places them (the file has no namespaces).
func applyClass(ctx context.Context, t *testing.T, c client.Client) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "templates", "clusterclass-proxmox-talos.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range splitYAML(t, raw) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatal(err)
		}
		u.SetNamespace(ns)
		if err := c.Create(ctx, u); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

func variable(t *testing.T, name string, v any) clusterv1.ClusterVariable {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	return clusterv1.ClusterVariable{Name: name, Value: apiextensionsv1.JSON{Raw: j}}
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

func nested(u *unstructured.Unstructured, path ...string) string {
	v, _, _ := unstructured.NestedFieldNoCopy(u.Object, path...)
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	default:
		return fmt.Sprint(x)
	}
}

func TestClusterClassTopology(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	applyClass(ctx, t, c)

	// The Cluster as cluster-template-topology.yaml generates it. Every variable is given: the
	// Cluster defaulting webhook that fills class defaults does not run here.
	pools := []map[string]any{
		{"name": "control-plane", "addresses": []string{"192.168.7.11-192.168.7.13"}, "prefix": 24, "gateway": "192.168.7.1", "dnsServers": []string{"192.168.7.2"}},
		{"name": "workers", "addresses": []string{"192.168.7.21-192.168.7.22"}, "prefix": 24, "gateway": "192.168.7.1", "dnsServers": []string{"192.168.7.2"}},
	}
	cluster := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: clusterName, Namespace: ns},
		Spec: clusterv1.ClusterSpec{
			Topology: clusterv1.Topology{
				ClassRef:     clusterv1.ClusterClassRef{Name: className},
				Version:      v1,
				ControlPlane: clusterv1.ControlPlaneTopology{Replicas: ptr.To[int32](3)},
				Workers: clusterv1.WorkersTopology{MachineDeployments: []clusterv1.MachineDeploymentTopology{
					{Class: "workers", Name: "workers", Replicas: ptr.To[int32](2)},
				}},
				Variables: []clusterv1.ClusterVariable{
					variable(t, "proxmoxURL", "https://pve.example.invalid:8006"),
					variable(t, "credentialsSecretName", clusterName+"-proxmox"),
					variable(t, "controlPlaneEndpoint", map[string]any{"host": "192.168.7.10", "port": 6443}),
					variable(t, "controlPlaneEndpointInterface", "eth1"),
					variable(t, "ipPools", pools),
					variable(t, "nodeSubnet", "192.168.7.0/24"),
					variable(t, "talosVersion", "v1.12.6"),
					variable(t, "talosFactoryURL", "https://factory.example.invalid"),
				},
			},
		},
	}
	if err := c.Create(ctx, cluster); err != nil {
		t.Fatal(err)
	}

	// 1. InfraCluster and control plane from the class, with the patches applied.
	var infra infrav1.ProxmoxTalosCluster
	tcp := &unstructured.Unstructured{}
	tcp.SetGroupVersionKind(tcpGVK)
	eventually(t, "Cluster gets infrastructureRef and controlPlaneRef", 30*time.Second, func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(cluster), cluster); err != nil {
			return err
		}
		if !cluster.Spec.InfrastructureRef.IsDefined() || !cluster.Spec.ControlPlaneRef.IsDefined() {
			return fmt.Errorf("refs not set yet; conditions %+v; class %s", cluster.Status.Conditions, classConditions(ctx, c))
		}
		return nil
	})
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: cluster.Spec.InfrastructureRef.Name}, &infra); err != nil {
		t.Fatal(err)
	}
	if got := infra.Spec.Proxmox.URL; got != "https://pve.example.invalid:8006" {
		t.Errorf("ProxmoxTalosCluster proxmox.url %q", got)
	}
	if got := infra.Spec.Proxmox.CredentialsRef.Name; got != clusterName+"-proxmox" {
		t.Errorf("credentialsRef %q", got)
	}
	if got := infra.Spec.ControlPlaneEndpoint; got.Host != "192.168.7.10" || got.Port != 6443 {
		t.Errorf("controlPlaneEndpoint %+v", got)
	}
	if len(infra.Spec.IPPools) != 2 || infra.Spec.IPPools[1].Name != "workers" || infra.Spec.IPPools[1].Addresses[0] != "192.168.7.21-192.168.7.22" {
		t.Errorf("ipPools %+v", infra.Spec.IPPools)
	}
	if infra.Spec.Talos.FactoryURL != "https://factory.example.invalid" {
		t.Errorf("talos.factoryURL %q: the class must let a cluster choose its Image Factory", infra.Spec.Talos.FactoryURL)
	}
	if infra.Spec.Talos.Version != "v1.12.6" {
		t.Errorf("talos.version %q", infra.Spec.Talos.Version)
	}
	// Our webhooks do not run here; the same validation must accept what topology produced.
	if errs := webhooks.ValidateClusterSpec(&infra.Spec, field.NewPath("spec")); len(errs) > 0 {
		t.Errorf("ProxmoxTalosCluster from the class fails validation: %v", errs.ToAggregate())
	}

	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: cluster.Spec.ControlPlaneRef.Name}, tcp); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"spec.version":                                      v1,
		"spec.replicas":                                     "3",
		"spec.infrastructureTemplate.kind":                  "ProxmoxTalosMachineTemplate",
		"spec.infrastructureTemplate.name":                  "proxmox-talos-control-plane",
		"spec.infrastructureTemplate.namespace":             ns,
		"spec.controlPlaneConfig.controlplane.talosVersion": "v1.12.6",
	} {
		if got := nested(tcp, strings.Split(path, ".")...); got != want {
			t.Errorf("TalosControlPlane %s = %q, want %q", path, got, want)
		}
	}
	if _, found, _ := unstructured.NestedFieldNoCopy(tcp.Object, "spec", "machineTemplate"); found {
		t.Error("TalosControlPlane got spec.machineTemplate, which CACPPT v1alpha3 does not have")
	}
	// Why the class declares no controlPlane.machineInfrastructure: topology would then apply
	// spec.machineTemplate.infrastructureRef (v1beta1 contract), and the API server refuses
	// that field on a TalosControlPlane (server-side apply, as topology does; dry run).
	probe := &unstructured.Unstructured{}
	probe.SetGroupVersionKind(tcpGVK)
	probe.SetNamespace(ns)
	probe.SetName(tcp.GetName())
	_ = unstructured.SetNestedMap(probe.Object, map[string]any{"kind": "ProxmoxTalosMachineTemplate", "name": "x"}, "spec", "machineTemplate", "infrastructureRef")
	if err := c.Patch(ctx, probe, client.Apply, client.FieldOwner("probe"), client.DryRunAll); err == nil || !strings.Contains(err.Error(), "machineTemplate") {
		t.Errorf("applying spec.machineTemplate to a TalosControlPlane: %v, want a refusal naming the field", err)
	} else {
		t.Logf("spec.machineTemplate refused as expected: %v", err)
	}
	patches, _, _ := unstructured.NestedStringSlice(tcp.Object, "spec", "controlPlaneConfig", "controlplane", "strategicPatches")
	joined := strings.Join(patches, "\n---\n")
	for _, want := range []string{"kind: Layer2VIPConfig", `name: "192.168.7.10"`, `link: "eth1"`, "- 192.168.7.0/24", "name: none"} {
		if !strings.Contains(joined, want) {
			t.Errorf("control-plane strategic patches lack %q:\n%s", want, joined)
		}
	}
	for _, p := range patches {
		var doc map[string]any
		if err := yaml.Unmarshal([]byte(p), &doc); err != nil || len(doc) == 0 {
			t.Errorf("strategic patch is not a YAML document (%v):\n%s", err, p)
		}
	}

	ownByCluster(ctx, t, c, cluster, cluster.Spec.ControlPlaneRef.Name)

	// 2. Workers: on creation topology creates the MachineDeployments in the same pass as the
	// control plane (the control-plane upgrade gates below apply to an existing control plane
	// only); CAPI's Machine controller and CABPT then wait for the control plane themselves.
	mdList := func() []clusterv1.MachineDeployment {
		var l clusterv1.MachineDeploymentList
		if err := c.List(ctx, &l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		return l.Items
	}
	var md clusterv1.MachineDeployment
	eventually(t, "MachineDeployment created", 30*time.Second, func() error {
		mds := mdList()
		if len(mds) != 1 {
			return fmt.Errorf("%d MachineDeployments", len(mds))
		}
		md = mds[0]
		return nil
	})
	if md.Spec.Template.Spec.Version != v1 || ptr.Deref(md.Spec.Replicas, 0) != 2 {
		t.Errorf("MachineDeployment version %q replicas %v", md.Spec.Template.Spec.Version, md.Spec.Replicas)
	}
	workerInfra := md.Spec.Template.Spec.InfrastructureRef.Name
	workerBootstrap := md.Spec.Template.Spec.Bootstrap.ConfigRef.Name
	// Worker templates are per-cluster clones (topology rotates them), not the class's own.
	var pmt infrav1.ProxmoxTalosMachineTemplate
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: workerInfra}, &pmt); err != nil {
		t.Fatal(err)
	}
	if workerInfra == "proxmox-talos-workers" || pmt.Annotations[clusterv1.TemplateClonedFromNameAnnotation] != "proxmox-talos-workers" {
		t.Errorf("worker machine template %s (cloned from %q) is not a clone of the class's", workerInfra, pmt.Annotations[clusterv1.TemplateClonedFromNameAnnotation])
	}
	if pmt.Spec.Template.Spec.NetworkDevices[0].IPv4.FromPool != "workers" {
		t.Errorf("worker template pool %+v", pmt.Spec.Template.Spec.NetworkDevices)
	}
	tct := getU(ctx, t, c, tctGVK, workerBootstrap)
	if workerBootstrap == "proxmox-talos-workers" || nested(tct, "spec", "template", "spec", "talosVersion") != "v1.12.6" {
		t.Errorf("worker TalosConfigTemplate %s talosVersion %q", workerBootstrap, nested(tct, "spec", "template", "spec", "talosVersion"))
	}

	// 3. A variable change that touches the worker config rotates the worker bootstrap
	// template; the control plane is patched in place and keeps its fixed machine template.
	setVariable(ctx, t, c, cluster, "nodeSubnet", "192.168.8.0/24")
	eventually(t, "worker TalosConfigTemplate rotated", 30*time.Second, func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(&md), &md); err != nil {
			return err
		}
		if md.Spec.Template.Spec.Bootstrap.ConfigRef.Name == workerBootstrap {
			return errors.New("still the old TalosConfigTemplate")
		}
		return nil
	})
	eventually(t, "TalosControlPlane patched in place", 30*time.Second, func() error {
		tcp = getU(ctx, t, c, tcpGVK, cluster.Spec.ControlPlaneRef.Name)
		patches, _, _ := unstructured.NestedStringSlice(tcp.Object, "spec", "controlPlaneConfig", "controlplane", "strategicPatches")
		if !strings.Contains(strings.Join(patches, "\n"), "192.168.8.0/24") {
			return errors.New("no new subnet in the control-plane patches")
		}
		return nil
	})
	if got := nested(tcp, "spec", "infrastructureTemplate", "name"); got != "proxmox-talos-control-plane" {
		t.Errorf("control-plane infrastructureTemplate changed to %q", got)
	}

	// 4. Version bump. While the TalosControlPlane reports no status.version (CACPPT sets it
	// from its Machines), topology treats it as still provisioning and keeps spec.version.
	setVersion(ctx, t, c, cluster, v2)
	time.Sleep(2 * time.Second)
	tcp = getU(ctx, t, c, tcpGVK, cluster.Spec.ControlPlaneRef.Name)
	if got := nested(tcp, "spec", "version"); got != v1 {
		t.Fatalf("TalosControlPlane spec.version %q before the control plane reported any version, want %s kept", got, v1)
	}
	// Once CACPPT would report the running version, the control plane is upgraded first ...
	setTCPStatus(ctx, t, c, tcp, v1)
	eventually(t, "TalosControlPlane spec.version bumped", 30*time.Second, func() error {
		tcp = getU(ctx, t, c, tcpGVK, cluster.Spec.ControlPlaneRef.Name)
		if got := nested(tcp, "spec", "version"); got != v2 {
			_ = c.Get(ctx, client.ObjectKeyFromObject(cluster), cluster)
			return fmt.Errorf("spec.version %q; status %v; Cluster conditions %+v", got, tcp.Object["status"], cluster.Status.Conditions)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	if err := c.Get(ctx, client.ObjectKeyFromObject(&md), &md); err != nil {
		t.Fatal(err)
	}
	if md.Spec.Template.Spec.Version != v1 {
		t.Fatalf("MachineDeployment upgraded to %s while the control plane still reports %s", md.Spec.Template.Spec.Version, v1)
	}
	// ... and the workers once it reports the new version (CACPPT: lowest Machine version,
	// i.e. after every control-plane Machine was replaced).
	setTCPStatus(ctx, t, c, tcp, v2)
	eventually(t, "MachineDeployment version bumped", 30*time.Second, func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(&md), &md); err != nil {
			return err
		}
		if md.Spec.Template.Spec.Version != v2 {
			return fmt.Errorf("version %q", md.Spec.Template.Spec.Version)
		}
		return nil
	})
	tcp = getU(ctx, t, c, tcpGVK, cluster.Spec.ControlPlaneRef.Name)
	if got := nested(tcp, "spec", "infrastructureTemplate", "name"); got != "proxmox-talos-control-plane" {
		t.Errorf("control-plane infrastructureTemplate changed to %q by the upgrade", got)
	}
}

func getU(ctx context.Context, t *testing.T, c client.Client, gvk schema.GroupVersionKind, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(gvk)
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	return u
}

// ownByCluster adds the Cluster ownerRef CAPI's core Cluster controller (not running here)
// puts on the control plane: the topology controller watches control planes through it
// (EnqueueRequestForOwner), so without it a status change would not wake topology up.
func ownByCluster(ctx context.Context, t *testing.T, c client.Client, cluster *clusterv1.Cluster, name string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		u := getU(ctx, t, c, tcpGVK, name)
		u.SetOwnerReferences(append(u.GetOwnerReferences(), metav1.OwnerReference{
			APIVersion: clusterv1.GroupVersion.String(), Kind: "Cluster", Name: cluster.Name, UID: cluster.UID,
		}))
		err := c.Update(ctx, u)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) || attempt > 5 {
			t.Fatal(err)
		}
	}
}

// setTCPStatus writes the status CACPPT v0.5.13 reports for a healthy control plane of the
// given version (taloscontrolplane_controller.go updateStatus: version is the lowest Machine
// version; initialized once the workload API answers, ready once a node is Ready).
func setTCPStatus(ctx context.Context, t *testing.T, c client.Client, tcp *unstructured.Unstructured, version string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		cur := getU(ctx, t, c, tcpGVK, tcp.GetName())
		replicas, _, _ := unstructured.NestedInt64(cur.Object, "spec", "replicas")
		_ = unstructured.SetNestedMap(cur.Object, map[string]any{
			"version":             version,
			"initialized":         true,
			"ready":               true,
			"bootstrapped":        true,
			"replicas":            replicas,
			"readyReplicas":       replicas,
			"unavailableReplicas": int64(0),
			"observedGeneration":  cur.GetGeneration(),
			"selector":            "cluster.x-k8s.io/cluster-name=" + clusterName + ",cluster.x-k8s.io/control-plane",
		}, "status")
		err := c.Status().Update(ctx, cur)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) || attempt > 5 {
			t.Fatalf("TalosControlPlane status: %v", err)
		}
	}
}

func setVariable(ctx context.Context, t *testing.T, c client.Client, cluster *clusterv1.Cluster, name string, v any) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		if err := c.Get(ctx, client.ObjectKeyFromObject(cluster), cluster); err != nil {
			t.Fatal(err)
		}
		for i := range cluster.Spec.Topology.Variables {
			if cluster.Spec.Topology.Variables[i].Name == name {
				cluster.Spec.Topology.Variables[i] = variable(t, name, v)
			}
		}
		err := c.Update(ctx, cluster)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) || attempt > 5 {
			t.Fatal(err)
		}
	}
}

func classConditions(ctx context.Context, c client.Client) string {
	var cc clusterv1.ClusterClass
	_ = c.Get(ctx, client.ObjectKey{Namespace: ns, Name: className}, &cc)
	return fmt.Sprintf("%+v", cc.Status.Conditions)
}

func setVersion(ctx context.Context, t *testing.T, c client.Client, cluster *clusterv1.Cluster, version string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		if err := c.Get(ctx, client.ObjectKeyFromObject(cluster), cluster); err != nil {
			t.Fatal(err)
		}
		cluster.Spec.Topology.Version = version
		err := c.Update(ctx, cluster)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) || attempt > 5 {
			t.Fatal(err)
		}
	}
}
