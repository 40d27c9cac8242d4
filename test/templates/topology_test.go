package templates

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	addonsv1 "sigs.k8s.io/cluster-api/api/addons/v1beta2"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/yaml"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// wantTopologyKinds is the census of the topology flavor's output: the Cluster, the add-on
// ClusterResourceSets and their ConfigMaps, plus the ClusterClass file clusterctl pulls in.
var wantTopologyKinds = map[string]string{
	"ClusterResourceSet":          "addons.cluster.x-k8s.io/v1beta2",
	"ConfigMap":                   "v1",
	"Cluster":                     "cluster.x-k8s.io/v1beta2",
	"ClusterClass":                "cluster.x-k8s.io/v1beta2",
	"ProxmoxTalosClusterTemplate": "infrastructure.cluster.x-k8s.io/v1beta1",
	"TalosControlPlaneTemplate":   "controlplane.cluster.x-k8s.io/v1alpha3",
	"ProxmoxTalosMachineTemplate": "infrastructure.cluster.x-k8s.io/v1beta1",
	"TalosConfigTemplate":         "bootstrap.cluster.x-k8s.io/v1alpha3",
}

// topologyManifest is the parsed output of the topology flavor.
type topologyManifest struct {
	objects []object
	byKey   map[string]object // "Kind/name"
	cluster clusterv1.Cluster
	class   clusterv1.ClusterClass
	vars    map[string]any // Cluster spec.topology.variables by name
	// addons holds the add-on part (Cluster, ClusterResourceSets, ConfigMaps) so the default
	// flavors' checks apply to it unchanged.
	addons *manifest
}

func checkTopologyManifest(t *testing.T, out []byte) *topologyManifest {
	t.Helper()
	if i := bytes.Index(out, []byte("${")); i >= 0 {
		t.Fatalf("unresolved variable in the output: %q", out[i:min(len(out), i+60)])
	}
	m := &topologyManifest{byKey: map[string]object{}, vars: map[string]any{},
		addons: &manifest{crs: map[string]addonsv1.ClusterResourceSet{}}}
	kinds := map[string]int{}
	for _, doc := range splitYAML(t, "generated manifest", out) {
		o := object{raw: doc}
		if err := yaml.Unmarshal(doc, &o.u); err != nil {
			t.Fatal(err)
		}
		o.Kind, o.Name = str(o.u["kind"]), str(get(o.u, "metadata.name"))
		if want, ok := wantTopologyKinds[o.Kind]; !ok || want != str(o.u["apiVersion"]) {
			t.Errorf("%s %s: unexpected kind or apiVersion %q (want %q)", o.Kind, o.Name, o.u["apiVersion"], want)
		}
		// clusterctl puts the class into the target namespace; the class file itself has none.
		if ns := str(get(o.u, "metadata.namespace")); ns != targetNamespace {
			t.Errorf("%s %s: namespace %q, want %q", o.Kind, o.Name, ns, targetNamespace)
		}
		key := o.Kind + "/" + o.Name
		if _, dup := m.byKey[key]; dup {
			t.Errorf("%s appears twice", key)
		}
		m.byKey[key] = o
		kinds[o.Kind]++
		m.objects = append(m.objects, o)
	}
	for kind := range wantTopologyKinds {
		want := 1
		switch kind {
		case "ProxmoxTalosMachineTemplate", "ConfigMap":
			want = 2
		case "ClusterResourceSet":
			want = 5
		}
		if kinds[kind] != want {
			t.Errorf("%d objects of kind %s, want %d", kinds[kind], kind, want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, o := range m.objects {
		switch o.Kind {
		case "Cluster":
			strict(t, o, &m.cluster)
		case "ClusterClass":
			strict(t, o, &m.class)
		case "ProxmoxTalosClusterTemplate":
			strict(t, o, &infrav1.ProxmoxTalosClusterTemplate{})
		case "ProxmoxTalosMachineTemplate":
			strict(t, o, &infrav1.ProxmoxTalosMachineTemplate{})
		case "ClusterResourceSet":
			var crs addonsv1.ClusterResourceSet
			strict(t, o, &crs)
			m.addons.crs[o.Name] = crs
			m.addons.objects = append(m.addons.objects, o)
		case "ConfigMap":
			m.addons.checkConfigMap(t, o)
			m.addons.objects = append(m.addons.objects, o)
		}
	}
	// The same add-ons as the other flavors, selecting this Cluster by its labels.
	m.addons.cluster = m.cluster
	m.addons.checkAddons(t)
	// Every kind, including CAPI's, CABPT's and the shim TalosControlPlaneTemplate, must have
	// its schema here: a ClusterClass template the API server prunes would silently lose fields.
	all := loadSchemas(t)
	for _, o := range m.objects {
		if !strings.Contains(str(o.u["apiVersion"]), "/") {
			continue // core kinds
		}
		if _, ok := all[str(o.u["apiVersion"])+" "+o.Kind]; !ok {
			msg := "no CRD schema for " + str(o.u["apiVersion"]) + " " + o.Kind + " (run hack/lab-binaries.sh)"
			if os.Getenv("CI") != "" || strings.HasPrefix(str(o.u["apiVersion"]), "infrastructure.") || o.Kind == "TalosControlPlaneTemplate" {
				t.Error(msg)
			} else {
				t.Log(msg)
			}
		}
	}
	checkSchemas(t, m.objects)

	for _, v := range m.cluster.Spec.Topology.Variables {
		var val any
		if err := yaml.Unmarshal(v.Value.Raw, &val); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		m.vars[v.Name] = val
	}
	m.checkReferences(t)
	return m
}

// checkReferences proves the Cluster, the class and its templates fit together: the class
// exists, every templateRef names an object in the output, the control plane's fixed machine
// template exists, every class variable is given exactly once, and the machine templates'
// pools are among the pools the Cluster passes.
func (m *topologyManifest) checkReferences(t *testing.T) {
	t.Helper()
	if m.cluster.Spec.Topology.ClassRef.Name != m.class.Name {
		t.Errorf("Cluster uses class %q, the output has %q", m.cluster.Spec.Topology.ClassRef.Name, m.class.Name)
	}
	refs := map[string]clusterv1.ClusterClassTemplateReference{
		"infrastructure": m.class.Spec.Infrastructure.TemplateRef,
		"controlPlane":   m.class.Spec.ControlPlane.TemplateRef,
	}
	for _, md := range m.class.Spec.Workers.MachineDeployments {
		refs[md.Class+" bootstrap"] = md.Bootstrap.TemplateRef
		refs[md.Class+" infrastructure"] = md.Infrastructure.TemplateRef
	}
	for what, r := range refs {
		o, ok := m.byKey[r.Kind+"/"+r.Name]
		if !ok || str(o.u["apiVersion"]) != r.APIVersion {
			t.Errorf("class %s templateRef %s %s/%s not in the output", what, r.APIVersion, r.Kind, r.Name)
		}
	}
	// TalosControlPlane has no machineTemplate.infrastructureRef for topology to set
	// (docs/clusterclass.md): the class must not declare machineInfrastructure.
	if m.class.Spec.ControlPlane.MachineInfrastructure.TemplateRef.IsDefined() {
		t.Error("class declares controlPlane.machineInfrastructure; TalosControlPlane v1alpha3 cannot take it")
	}
	tcpt := m.byKey["TalosControlPlaneTemplate/"+m.class.Spec.ControlPlane.TemplateRef.Name]
	it := get(tcpt.u, "spec.template.spec.infrastructureTemplate")
	if o, ok := m.byKey[str(get(it, "kind"))+"/"+str(get(it, "name"))]; !ok || str(o.u["apiVersion"]) != str(get(it, "apiVersion")) {
		t.Errorf("TalosControlPlaneTemplate infrastructureTemplate %v is not in the output", it)
	}
	declared := map[string]bool{}
	for _, v := range m.class.Spec.Variables {
		declared[v.Name] = true
		if _, ok := m.vars[v.Name]; !ok && ptrTrue(v.Required) {
			t.Errorf("required class variable %s not set by the Cluster", v.Name)
		}
	}
	for name := range m.vars {
		if !declared[name] {
			t.Errorf("Cluster sets variable %s the class does not declare", name)
		}
	}
	var pools []string
	for _, p := range asList(m.vars["ipPools"]) {
		pools = append(pools, str(get(p, "name")))
	}
	for _, o := range m.objects {
		if o.Kind != "ProxmoxTalosMachineTemplate" {
			continue
		}
		for _, nic := range asList(get(o.u, "spec.template.spec.networkDevices")) {
			if p := str(get(nic, "ipv4.fromPool")); p != "" && !slices.Contains(pools, p) {
				t.Errorf("%s takes addresses from pool %q, not among the Cluster's pools %v", o.Name, p, pools)
			}
		}
	}
	if md := m.cluster.Spec.Topology.Workers.MachineDeployments; len(md) != 1 || md[0].Class != m.class.Spec.Workers.MachineDeployments[0].Class {
		t.Errorf("Cluster MachineDeployments %+v do not use the class's worker class", md)
	}
}

func ptrTrue(b *bool) bool { return b != nil && *b }

// poolValues lists a field of every pool in the ipPools variable (name "" = all pools).
func (m *topologyManifest) poolValues(name, path string) []string {
	var out []string
	for _, p := range asList(m.vars["ipPools"]) {
		if name == "" || str(get(p, "name")) == name {
			out = append(out, stringOrList(get(p, path))...)
		}
	}
	return out
}

func stringOrList(v any) []string {
	if l, ok := v.([]any); ok {
		return stringList(l)
	}
	if v == nil {
		return nil
	}
	return []string{str(v)}
}

// topologyValueAt maps each topology-flavor variable to where it lands in the generated Cluster.
var topologyValueAt = map[string]func(*topologyManifest) []string{
	"KUBERNETES_VERSION": func(m *topologyManifest) []string { return []string{m.cluster.Spec.Topology.Version} },
	"CONTROL_PLANE_MACHINE_COUNT": func(m *topologyManifest) []string {
		return []string{str(float64(deref(m.cluster.Spec.Topology.ControlPlane.Replicas)))}
	},
	"WORKER_MACHINE_COUNT": func(m *topologyManifest) []string {
		return []string{str(float64(deref(m.cluster.Spec.Topology.Workers.MachineDeployments[0].Replicas)))}
	},
	"POD_CIDR":                         func(m *topologyManifest) []string { return m.cluster.Spec.ClusterNetwork.Pods.CIDRBlocks },
	"SERVICE_CIDR":                     func(m *topologyManifest) []string { return m.cluster.Spec.ClusterNetwork.Services.CIDRBlocks },
	"PROXMOX_URL":                      func(m *topologyManifest) []string { return stringOrList(m.vars["proxmoxURL"]) },
	"CONTROL_PLANE_ENDPOINT_IP":        func(m *topologyManifest) []string { return stringOrList(get(m.vars["controlPlaneEndpoint"], "host")) },
	"CONTROL_PLANE_ENDPOINT_PORT":      func(m *topologyManifest) []string { return stringOrList(get(m.vars["controlPlaneEndpoint"], "port")) },
	"CONTROL_PLANE_ENDPOINT_INTERFACE": func(m *topologyManifest) []string { return stringOrList(m.vars["controlPlaneEndpointInterface"]) },
	"CONTROL_PLANE_IP_RANGE":           func(m *topologyManifest) []string { return m.poolValues("control-plane", "addresses") },
	"WORKER_IP_RANGE":                  func(m *topologyManifest) []string { return m.poolValues("workers", "addresses") },
	"NODE_IP_PREFIX":                   func(m *topologyManifest) []string { return m.poolValues("", "prefix") },
	"NODE_GATEWAY":                     func(m *topologyManifest) []string { return m.poolValues("", "gateway") },
	"NODE_DNS_SERVER":                  func(m *topologyManifest) []string { return m.poolValues("", "dnsServers") },
	"NODE_SUBNET":                      func(m *topologyManifest) []string { return stringOrList(m.vars["nodeSubnet"]) },
	"TALOS_VERSION":                    func(m *topologyManifest) []string { return stringOrList(m.vars["talosVersion"]) },
	"TALOS_FACTORY_URL":                func(m *topologyManifest) []string { return stringOrList(m.vars["talosFactoryURL"]) },
	"TALOS_FACTORY_INSECURE_ALLOW_HTTP": func(m *topologyManifest) []string {
		return stringOrList(m.vars["talosFactoryInsecureAllowHTTP"])
	},
	"METALLB_INGRESS_IP":     func(m *topologyManifest) []string { return valueAt["METALLB_INGRESS_IP"](m.addons) },
	"METALLB_DNS_IP":         func(m *topologyManifest) []string { return valueAt["METALLB_DNS_IP"](m.addons) },
	"METALLB_SERVICES_RANGE": func(m *topologyManifest) []string { return valueAt["METALLB_SERVICES_RANGE"](m.addons) },
	"FLUX_GIT_URL":           func(m *topologyManifest) []string { return valueAt["FLUX_GIT_URL"](m.addons) },
	"FLUX_GIT_BRANCH":        func(m *topologyManifest) []string { return valueAt["FLUX_GIT_BRANCH"](m.addons) },
	"FLUX_GIT_PATH":          func(m *topologyManifest) []string { return valueAt["FLUX_GIT_PATH"](m.addons) },
}

// checkValues proves every variable's value reached its field, and that the test covers every
// variable of the flavor.
func (m *topologyManifest) checkValues(t *testing.T, vals map[string]string) {
	t.Helper()
	if got := m.vars["credentialsSecretName"]; got != clusterName+"-proxmox" {
		t.Errorf("credentialsSecretName %v, want %s-proxmox", got, clusterName)
	}
	for name, want := range vals {
		if name == "CLUSTER_NAME" || name == "NAMESPACE" {
			continue
		}
		at, ok := topologyValueAt[name]
		if !ok {
			t.Errorf("test has no location for variable %s", name)
			continue
		}
		got := at(m)
		if len(got) == 0 {
			t.Errorf("%s=%q: found nowhere", name, want)
		}
		for _, g := range got {
			if g != want {
				t.Errorf("%s=%q: found %q", name, want, g)
			}
		}
	}
	for name := range topologyValueAt {
		if _, ok := vals[name]; !ok {
			t.Errorf("variable %s was not set by the test", name)
		}
	}
}

// TestClusterClassFileConventions checks clusterctl's rules for clusterclass-<name>.yaml: no
// variables and no namespaces inside (clusterctl places it in the target namespace).
func TestClusterClassFileConventions(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "templates", clusterClassFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("${")) {
		t.Errorf("%s contains a clusterctl variable", clusterClassFile)
	}
	for _, doc := range splitYAML(t, clusterClassFile, raw) {
		var u map[string]any
		if err := yaml.Unmarshal(doc, &u); err != nil {
			t.Fatal(err)
		}
		if ns := get(u, "metadata.namespace"); ns != nil {
			t.Errorf("%s %s has namespace %v", u["kind"], get(u, "metadata.name"), ns)
		}
	}
}

// TestTalosControlPlaneTemplateCRDUpToDate proves the committed shim CRD is what
// hack/gen-tcp-template-crd.go derives from CACPPT's cached CRD. Without the cache it skips,
// except under CI.
func TestTalosControlPlaneTemplateCRDUpToDate(t *testing.T) {
	root := repoRoot(t)
	dirOut, err := exec.Command("bash", filepath.Join(root, "hack", "lab-binaries.sh"), "--dir", "cacppt").Output()
	if err != nil {
		t.Fatalf("hack/lab-binaries.sh --dir cacppt: %v", err)
	}
	dir := strings.TrimSpace(string(dirOut))
	if _, err := os.Stat(filepath.Join(dir, "config", "crd", "bases")); err != nil {
		testenv.SkipOrFail(t, "CACPPT cache %s missing: run hack/lab-binaries.sh cacppt (or make lab-binaries)", dir)
	}
	out := filepath.Join(t.TempDir(), "crd.yaml")
	cmd := exec.Command("go", "run", "./hack/gen-tcp-template-crd.go", "-cacppt", dir, "-o", out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run hack/gen-tcp-template-crd.go: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	committed := filepath.Join(root, "config", "optional", "taloscontrolplanetemplate", "controlplane.cluster.x-k8s.io_taloscontrolplanetemplates.yaml")
	got, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date: run go run hack/gen-tcp-template-crd.go", committed)
	}
}
