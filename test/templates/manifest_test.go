package templates

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	addonsv1 "sigs.k8s.io/cluster-api/api/addons/v1beta2"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/webhooks"
)

// object is one generated document.
type object struct {
	raw  []byte
	u    map[string]any
	Kind string
	Name string
}

// manifest is the parsed output of one generation.
type manifest struct {
	raw     []byte
	objects []object

	cluster       clusterv1.Cluster
	infraCluster  infrav1.ProxmoxTalosCluster
	machineTmpls  map[string]infrav1.ProxmoxTalosMachineTemplate
	md            clusterv1.MachineDeployment
	mhcs          map[string]clusterv1.MachineHealthCheck
	crs           map[string]addonsv1.ClusterResourceSet
	controlPlane  map[string]any // TalosControlPlane (no Go types in this module: CACPPT is v1beta1-contract)
	workerConfig  map[string]any // TalosConfigTemplate
	tailscaleDocs []map[string]any
	kubeVIP       []map[string]any // kube-vip inline manifest documents (kube-vip flavors)
	talosVIP      map[string]any   // Layer2VIPConfig patch (talos-vip flavor)
	metallbPools  []map[string]any
	fluxSync      []map[string]any
}

// wantKinds is the kind census of every flavor.
var wantKinds = map[string]int{
	"Cluster":                     1,
	"ProxmoxTalosCluster":         1,
	"Secret":                      1,
	"TalosControlPlane":           1,
	"ProxmoxTalosMachineTemplate": 2,
	"MachineDeployment":           1,
	"TalosConfigTemplate":         1,
	"ClusterResourceSet":          5,
	"ConfigMap":                   2,
	"MachineHealthCheck":          2,
}

// wantAPIVersions pins each kind's API version.
var wantAPIVersions = map[string]string{
	"Cluster":                     "cluster.x-k8s.io/v1beta2",
	"ProxmoxTalosCluster":         "infrastructure.cluster.x-k8s.io/v1beta1",
	"Secret":                      "v1",
	"TalosControlPlane":           "controlplane.cluster.x-k8s.io/v1alpha3",
	"ProxmoxTalosMachineTemplate": "infrastructure.cluster.x-k8s.io/v1beta1",
	"MachineDeployment":           "cluster.x-k8s.io/v1beta2",
	"TalosConfigTemplate":         "bootstrap.cluster.x-k8s.io/v1alpha3",
	"ClusterResourceSet":          "addons.cluster.x-k8s.io/v1beta2",
	"ConfigMap":                   "v1",
	"MachineHealthCheck":          "cluster.x-k8s.io/v1beta2",
}

// externalConfigMaps are the ConfigMaps `make addons` produces (not in the templates).
var externalConfigMaps = []string{clusterName + "-cilium", clusterName + "-metallb", clusterName + "-flux"}

// splitYAML splits a multi-document YAML stream, dropping empty documents.
func splitYAML(t *testing.T, what string, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var probe any
		if err := yaml.Unmarshal(doc, &probe); err != nil {
			t.Fatalf("%s: document does not parse: %v\n%s", what, err, doc)
		}
		if probe != nil {
			docs = append(docs, doc)
		}
	}
}

// parseDocs parses a multi-document YAML string into maps.
func parseDocs(t *testing.T, what, data string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, doc := range splitYAML(t, what, []byte(data)) {
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		out = append(out, m)
	}
	return out
}

// strict decodes an object into a Go type, refusing unknown and duplicate fields. encoding/json
// (behind sigs.k8s.io/yaml) matches field names case-insensitively, so a second, case-sensitive
// pass (sigs.k8s.io/json, what the API machinery uses) catches `memoryMib` for `memoryMiB`.
func strict(t *testing.T, o object, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(o.raw, into); err != nil {
		t.Fatalf("%s %s does not decode strictly into %T: %v", o.Kind, o.Name, into, err)
	}
	j, err := yaml.YAMLToJSON(o.raw)
	if err != nil {
		t.Fatal(err)
	}
	strictErrs, err := sigsjson.UnmarshalStrict(j, into, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil || len(strictErrs) > 0 {
		t.Fatalf("%s %s does not decode case-sensitively into %T: %v %v", o.Kind, o.Name, into, err, strictErrs)
	}
}

// get walks a dotted path (numeric segments index lists) through decoded YAML.
func get(v any, path string) any {
	for _, seg := range strings.Split(path, ".") {
		switch c := v.(type) {
		case map[string]any:
			v = c[seg]
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(c) {
				return nil
			}
			v = c[i]
		default:
			return nil
		}
	}
	return v
}

func str(v any) string {
	switch c := v.(type) {
	case nil:
		return ""
	case string:
		return c
	case float64:
		return strconv.FormatFloat(c, 'f', -1, 64)
	default:
		return fmt.Sprint(c)
	}
}

func stringList(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, e := range l {
			out = append(out, str(e))
		}
	}
	return out
}

// checkManifest parses, decodes and validates one generated flavor.
func checkManifest(t *testing.T, flavor string, out []byte) *manifest {
	t.Helper()
	if i := bytes.Index(out, []byte("${")); i >= 0 {
		t.Fatalf("unresolved variable in the output: %q", out[i:min(len(out), i+60)])
	}
	m := &manifest{raw: out, machineTmpls: map[string]infrav1.ProxmoxTalosMachineTemplate{}, crs: map[string]addonsv1.ClusterResourceSet{},
		mhcs: map[string]clusterv1.MachineHealthCheck{}}
	kinds := map[string]int{}
	seen := map[string]bool{}
	for _, doc := range splitYAML(t, "generated manifest", out) {
		o := object{raw: doc}
		if err := yaml.Unmarshal(doc, &o.u); err != nil {
			t.Fatal(err)
		}
		o.Kind, o.Name = str(o.u["kind"]), str(get(o.u, "metadata.name"))
		if o.Kind == "" || o.Name == "" {
			t.Fatalf("document without kind or name:\n%s", doc)
		}
		if want := wantAPIVersions[o.Kind]; want != str(o.u["apiVersion"]) {
			t.Errorf("%s %s: apiVersion %q, want %q", o.Kind, o.Name, o.u["apiVersion"], want)
		}
		if ns := str(get(o.u, "metadata.namespace")); ns != targetNamespace {
			t.Errorf("%s %s: namespace %q, want %q (one namespace per template)", o.Kind, o.Name, ns, targetNamespace)
		}
		if !strings.HasPrefix(o.Name, clusterName) {
			t.Errorf("%s %s: name does not start with the cluster name", o.Kind, o.Name)
		}
		key := o.Kind + "/" + o.Name
		if seen[key] {
			t.Errorf("%s appears twice", key)
		}
		seen[key] = true
		kinds[o.Kind]++
		m.objects = append(m.objects, o)
	}
	for kind, n := range wantKinds {
		if kinds[kind] != n {
			t.Errorf("%d objects of kind %s, want %d", kinds[kind], kind, n)
		}
	}
	for kind := range kinds {
		if _, ok := wantKinds[kind]; !ok {
			t.Errorf("unexpected kind %s", kind)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	for _, o := range m.objects {
		switch o.Kind {
		case "Cluster":
			strict(t, o, &m.cluster)
		case "ProxmoxTalosCluster":
			strict(t, o, &m.infraCluster)
		case "ProxmoxTalosMachineTemplate":
			var mt infrav1.ProxmoxTalosMachineTemplate
			strict(t, o, &mt)
			m.machineTmpls[o.Name] = mt
		case "MachineDeployment":
			strict(t, o, &m.md)
		case "MachineHealthCheck":
			var mhc clusterv1.MachineHealthCheck
			strict(t, o, &mhc)
			m.mhcs[o.Name] = mhc
		case "ClusterResourceSet":
			var crs addonsv1.ClusterResourceSet
			strict(t, o, &crs)
			m.crs[o.Name] = crs
		case "TalosControlPlane":
			m.controlPlane = o.u
		case "TalosConfigTemplate":
			m.workerConfig = o.u
		case "Secret":
			m.checkTailscaleSecret(t, o)
		case "ConfigMap":
			m.checkConfigMap(t, o)
		}
	}
	checkSchemas(t, m.objects)
	m.checkInfrastructure(t, flavor)
	m.checkTalos(t, flavor)
	m.checkWorkers(t)
	m.checkHealthChecks(t)
	m.checkAddons(t)
	return m
}

// checkHealthChecks: one MachineHealthCheck selects the MachineDeployment's Machines (the
// label the MachineSet puts on them), one the control planes (CACPPT's label); both treat a
// Node Ready=False or Unknown as unhealthy after a timeout (the values: valueAt) and at most
// one control plane is remediated at a time.
func (m *manifest) checkHealthChecks(t *testing.T) {
	t.Helper()
	selects := map[string]map[string]string{
		clusterName + "-workers":       {clusterv1.MachineDeploymentNameLabel: m.md.Name},
		clusterName + "-control-plane": {clusterv1.MachineControlPlaneLabel: ""},
	}
	for name, want := range selects {
		mhc, ok := m.mhcs[name]
		if !ok {
			t.Errorf("no MachineHealthCheck %s", name)
			continue
		}
		if mhc.Spec.ClusterName != clusterName {
			t.Errorf("MachineHealthCheck %s: clusterName %q", name, mhc.Spec.ClusterName)
		}
		sel, err := metav1.LabelSelectorAsSelector(&mhc.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(want)) {
			t.Errorf("MachineHealthCheck %s: selector %v does not select Machines labelled %v (%v)", name, mhc.Spec.Selector, want, err)
		}
		if mhc.Spec.Checks.NodeStartupTimeoutSeconds == nil {
			t.Errorf("MachineHealthCheck %s: no nodeStartupTimeoutSeconds", name)
		}
		var statuses []corev1.ConditionStatus
		for _, c := range mhc.Spec.Checks.UnhealthyNodeConditions {
			if c.Type != corev1.NodeReady || c.TimeoutSeconds == nil {
				t.Errorf("MachineHealthCheck %s: unhealthy condition %s after %v, want Ready with a timeout", name, c.Type, c.TimeoutSeconds)
			}
			statuses = append(statuses, c.Status)
		}
		if !slices.Equal(statuses, []corev1.ConditionStatus{corev1.ConditionUnknown, corev1.ConditionFalse}) {
			t.Errorf("MachineHealthCheck %s: Ready statuses %v, want Unknown and False", name, statuses)
		}
		if mhc.Spec.Remediation.TriggerIf.UnhealthyLessThanOrEqualTo == nil {
			t.Errorf("MachineHealthCheck %s: no unhealthyLessThanOrEqualTo: an outage would replace every machine", name)
		}
	}
	// CAPI rounds a percentage down: the check must let one of the documented default two
	// workers be replaced (40% would let none, and nothing would ever be remediated).
	if w := m.mhcs[clusterName+"-workers"].Spec.Remediation.TriggerIf.UnhealthyLessThanOrEqualTo; w != nil {
		if n, err := intstr.GetScaledValueFromIntOrPercent(w, defaultWorkers, false); err != nil || n < 1 {
			t.Errorf("workers MachineHealthCheck unhealthyLessThanOrEqualTo %s allows %d of %d workers to be remediated (%v), want at least 1", w, n, defaultWorkers, err)
		}
	}
	if cp := m.mhcs[clusterName+"-control-plane"].Spec.Remediation.TriggerIf.UnhealthyLessThanOrEqualTo; cp != nil && cp.String() != "1" {
		t.Errorf("control-plane MachineHealthCheck unhealthyLessThanOrEqualTo %s, want 1", cp)
	}
}

func (m *manifest) has(kind, name string) bool {
	for _, o := range m.objects {
		if o.Kind == kind && o.Name == name {
			return true
		}
	}
	return false
}

func (m *manifest) checkTailscaleSecret(t *testing.T, o object) {
	t.Helper()
	if o.Name != clusterName+"-tailscale" {
		t.Errorf("unexpected Secret %s", o.Name)
		return
	}
	value := str(get(o.u, "stringData.value"))
	m.tailscaleDocs = parseDocs(t, "Secret "+o.Name+" value", value)
	if len(m.tailscaleDocs) != 1 {
		t.Fatalf("Secret %s: %d documents, want one ExtensionServiceConfig", o.Name, len(m.tailscaleDocs))
	}
	d := m.tailscaleDocs[0]
	if str(d["apiVersion"]) != "v1alpha1" || str(d["kind"]) != "ExtensionServiceConfig" || str(d["name"]) != "tailscale" {
		t.Errorf("Secret %s: not a tailscale ExtensionServiceConfig: %v", o.Name, d)
	}
	env := stringList(d["environment"])
	if !slices.ContainsFunc(env, func(s string) bool { return strings.HasPrefix(s, "TS_AUTHKEY=") && len(s) > len("TS_AUTHKEY=") }) {
		t.Errorf("Secret %s: no TS_AUTHKEY in %v", o.Name, env)
	}
	if !slices.ContainsFunc(env, func(s string) bool { return strings.HasPrefix(s, "TS_EXTRA_ARGS=--login-server=https://") }) {
		t.Errorf("Secret %s: no TS_EXTRA_ARGS=--login-server=https://... in %v", o.Name, env)
	}
}

func (m *manifest) checkConfigMap(t *testing.T, o object) {
	t.Helper()
	switch o.Name {
	case clusterName + "-metallb-pools":
		m.metallbPools = parseDocs(t, "ConfigMap "+o.Name, dataKey(o.u, "pools.yaml"))
		var pools []string
		for _, d := range m.metallbPools {
			if str(d["apiVersion"]) != "metallb.io/v1beta1" || str(get(d, "metadata.namespace")) != "metallb-system" {
				t.Errorf("ConfigMap %s: %s %s is not a metallb.io/v1beta1 object in metallb-system", o.Name, d["kind"], get(d, "metadata.name"))
			}
			if str(d["kind"]) == "IPAddressPool" {
				pools = append(pools, str(get(d, "metadata.name")))
			}
		}
		sort.Strings(pools)
		if !slices.Equal(pools, []string{"dns-pool", "ingress-pool", "services-pool"}) {
			t.Errorf("ConfigMap %s: pools %v", o.Name, pools)
		}
		for _, d := range m.metallbPools {
			if str(d["kind"]) == "L2Advertisement" {
				adv := stringList(get(d, "spec.ipAddressPools"))
				sort.Strings(adv)
				if !slices.Equal(adv, pools) {
					t.Errorf("L2Advertisement announces %v, pools are %v", adv, pools)
				}
			}
		}
	case clusterName + "-flux-sync":
		m.fluxSync = parseDocs(t, "ConfigMap "+o.Name, dataKey(o.u, "sync.yaml"))
		var kinds []string
		for _, d := range m.fluxSync {
			kinds = append(kinds, str(d["apiVersion"])+" "+str(d["kind"]))
			if str(get(d, "metadata.namespace")) != "flux-system" {
				t.Errorf("flux sync object %v not in flux-system", d["kind"])
			}
		}
		if !slices.Equal(kinds, []string{"source.toolkit.fluxcd.io/v1 GitRepository", "kustomize.toolkit.fluxcd.io/v1 Kustomization"}) {
			t.Errorf("ConfigMap %s: objects %v", o.Name, kinds)
		}
	default:
		t.Errorf("unexpected ConfigMap %s", o.Name)
	}
}

// checkInfrastructure decodes our kinds, runs the webhooks' defaulting and validation and
// checks references between them.
func (m *manifest) checkInfrastructure(t *testing.T, flavor string) {
	t.Helper()
	spec := m.infraCluster.Spec.DeepCopy()
	spec.Default()
	if errs := webhooks.ValidateClusterSpec(spec, field.NewPath("spec")); len(errs) > 0 {
		t.Errorf("ProxmoxTalosCluster fails validation: %v", errs.ToAggregate())
	}
	wantPlatform := infrav1.TalosPlatformNoCloud
	if flavor == "metal" {
		wantPlatform = infrav1.TalosPlatformMetal
	}
	if m.infraCluster.Spec.Talos.Platform != wantPlatform {
		t.Errorf("talos.platform %q, want %q", m.infraCluster.Spec.Talos.Platform, wantPlatform)
	}
	if got := m.infraCluster.Spec.Talos.Extensions; !slices.Equal(got, []string{"siderolabs/qemu-guest-agent", "siderolabs/tailscale"}) {
		t.Errorf("talos.extensions %v", got)
	}
	if m.infraCluster.Spec.Proxmox.CredentialsRef.Name != clusterName+"-proxmox" {
		t.Errorf("credentialsRef %q", m.infraCluster.Spec.Proxmox.CredentialsRef.Name)
	}
	if ec := m.infraCluster.Spec.ExtraConfig; len(ec) != 1 || ec[0].Name != clusterName+"-tailscale" || ec[0].Key != "value" || !m.has("Secret", ec[0].Name) {
		t.Errorf("extraConfig %+v does not name the Secret %s-tailscale, key value", ec, clusterName)
	}
	pools := map[string]bool{}
	for _, p := range m.infraCluster.Spec.IPPools {
		pools[p.Name] = true
	}

	cpTmpl := str(get(m.controlPlane, "spec.infrastructureTemplate.name"))
	if len(m.machineTmpls) != 2 {
		t.Fatalf("machine templates %v", m.machineTmpls)
	}
	for name, mt := range m.machineTmpls {
		s := mt.Spec.Template.Spec.DeepCopy()
		s.Default()
		controlPlane := name == cpTmpl
		if errs := webhooks.ValidateMachineSpec(s, controlPlane, field.NewPath("spec", "template", "spec")); len(errs) > 0 {
			t.Errorf("ProxmoxTalosMachineTemplate %s fails validation: %v", name, errs.ToAggregate())
		}
		for _, nic := range s.NetworkDevices {
			if nic.IPv4 != nil && nic.IPv4.FromPool != "" && !pools[nic.IPv4.FromPool] {
				t.Errorf("ProxmoxTalosMachineTemplate %s: %s takes addresses from pool %q, which the cluster lacks", name, nic.Name, nic.IPv4.FromPool)
			}
		}
	}
	if _, ok := m.machineTmpls[cpTmpl]; !ok || get(m.controlPlane, "spec.infrastructureTemplate.kind") != "ProxmoxTalosMachineTemplate" ||
		str(get(m.controlPlane, "spec.infrastructureTemplate.apiVersion")) != infrav1.GroupVersion.String() {
		t.Errorf("TalosControlPlane infrastructureTemplate %v does not name a ProxmoxTalosMachineTemplate of the manifest", get(m.controlPlane, "spec.infrastructureTemplate"))
	}

	c := m.cluster
	if c.Spec.InfrastructureRef.Kind != "ProxmoxTalosCluster" || c.Spec.InfrastructureRef.APIGroup != infrav1.GroupVersion.Group || c.Spec.InfrastructureRef.Name != m.infraCluster.Name {
		t.Errorf("Cluster infrastructureRef %+v", c.Spec.InfrastructureRef)
	}
	if c.Spec.ControlPlaneRef.Kind != "TalosControlPlane" || c.Spec.ControlPlaneRef.APIGroup != "controlplane.cluster.x-k8s.io" || !m.has("TalosControlPlane", c.Spec.ControlPlaneRef.Name) {
		t.Errorf("Cluster controlPlaneRef %+v", c.Spec.ControlPlaneRef)
	}
	if len(c.Spec.ClusterNetwork.Pods.CIDRBlocks) != 1 || len(c.Spec.ClusterNetwork.Services.CIDRBlocks) != 1 {
		t.Errorf("Cluster clusterNetwork %+v", c.Spec.ClusterNetwork)
	}
}

// patches parses the strategicPatches of a Talos config spec at path.
func patches(t *testing.T, obj map[string]any, path string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for i, p := range stringList(get(obj, path)) {
		out = append(out, parseDocs(t, fmt.Sprintf("%s[%d]", path, i), p)...)
	}
	return out
}

// subnetAndExclusion reports whether a kubelet/etcd subnet list is exactly one subnet plus one
// excluded /32 (the VIP).
func subnetAndExclusion(l []string) bool {
	return len(l) == 2 && !strings.HasPrefix(l[0], "!") && strings.HasPrefix(l[1], "!") && strings.HasSuffix(l[1], "/32")
}

// checkCilium proves a Talos config's patches turn off the default CNI and kube-proxy and pin
// the node IP to the node subnet.
func checkCilium(t *testing.T, what string, docs []map[string]any) {
	t.Helper()
	var cniNone, proxyOff, nodeIP bool
	for _, d := range docs {
		cniNone = cniNone || str(get(d, "cluster.network.cni.name")) == "none"
		proxyOff = proxyOff || get(d, "cluster.proxy.disabled") == true
		// The node subnet and the VIP excluded from it ("!<VIP>/32").
		nodeIP = nodeIP || subnetAndExclusion(stringList(get(d, "machine.kubelet.nodeIP.validSubnets")))
	}
	if !cniNone || !proxyOff || !nodeIP {
		t.Errorf("%s: patches: cni none %v, kube-proxy disabled %v, kubelet validSubnets %v", what, cniNone, proxyOff, nodeIP)
	}
}

func (m *manifest) checkTalos(t *testing.T, flavor string) {
	t.Helper()
	cp := m.controlPlane
	const cfg = "spec.controlPlaneConfig.controlplane."
	if str(get(cp, cfg+"generateType")) != "controlplane" || str(get(cp, cfg+"hostname.source")) != "MachineName" {
		t.Errorf("TalosControlPlane controlplane config: generateType %v, hostname %v", get(cp, cfg+"generateType"), get(cp, cfg+"hostname"))
	}
	if str(get(cp, cfg+"talosVersion")) != m.infraCluster.Spec.Talos.Version {
		t.Errorf("TalosControlPlane talosVersion %v differs from the image's %s", get(cp, cfg+"talosVersion"), m.infraCluster.Spec.Talos.Version)
	}
	if str(get(cp, "spec.version")) != m.md.Spec.Template.Spec.Version {
		t.Errorf("control-plane version %v differs from the workers' %s", get(cp, "spec.version"), m.md.Spec.Template.Spec.Version)
	}
	docs := patches(t, cp, cfg+"strategicPatches")
	checkCilium(t, "TalosControlPlane", docs)
	vip := m.infraCluster.Spec.ControlPlaneEndpoint.Host
	var etcdSubnets bool
	for _, d := range docs {
		etcdSubnets = etcdSubnets || subnetAndExclusion(stringList(get(d, "cluster.etcd.advertisedSubnets")))
		for _, im := range asList(get(d, "cluster.inlineManifests")) {
			if str(get(im, "name")) == "kube-vip" {
				m.kubeVIP = parseDocs(t, "kube-vip inline manifest", str(get(im, "contents")))
			}
		}
		if str(d["kind"]) == "Layer2VIPConfig" {
			m.talosVIP = d
		}
	}
	if !etcdSubnets {
		t.Error("TalosControlPlane: no etcd advertisedSubnets patch")
	}
	switch flavor {
	case "talos-vip":
		if m.kubeVIP != nil {
			t.Error("talos-vip flavor carries kube-vip")
		}
		if m.talosVIP == nil || str(m.talosVIP["apiVersion"]) != "v1alpha1" || str(m.talosVIP["name"]) != vip || str(m.talosVIP["link"]) == "" {
			t.Errorf("talos-vip flavor: Layer2VIPConfig %v does not hold the VIP %s", m.talosVIP, vip)
		}
	default:
		if m.talosVIP != nil {
			t.Error("kube-vip flavor carries a Talos VIP too")
		}
		m.checkKubeVIP(t, vip)
	}
}

// dataKey reads a ConfigMap data key (keys contain dots, so get cannot walk them).
func dataKey(cm map[string]any, key string) string {
	data, _ := cm["data"].(map[string]any)
	return str(data[key])
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func (m *manifest) checkKubeVIP(t *testing.T, vip string) {
	t.Helper()
	var ds map[string]any
	var kinds []string
	for _, d := range m.kubeVIP {
		kinds = append(kinds, str(d["kind"]))
		if str(d["kind"]) == "DaemonSet" {
			ds = d
		}
	}
	if !slices.Equal(kinds, []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}) || ds == nil {
		t.Fatalf("kube-vip inline manifest kinds %v", kinds)
	}
	pod := get(ds, "spec.template.spec")
	if get(pod, "hostNetwork") != true {
		t.Error("kube-vip DaemonSet without hostNetwork")
	}
	sel, _ := get(pod, "nodeSelector").(map[string]any)
	if _, ok := sel["node-role.kubernetes.io/control-plane"]; !ok {
		t.Errorf("kube-vip DaemonSet nodeSelector %v does not select control planes", sel)
	}
	tolerated := false
	for _, tol := range asList(get(pod, "tolerations")) {
		tolerated = tolerated || str(get(tol, "key")) == "node-role.kubernetes.io/control-plane"
	}
	if !tolerated {
		t.Error("kube-vip DaemonSet does not tolerate the control-plane taint")
	}
	env := map[string]string{}
	for _, e := range asList(get(pod, "containers.0.env")) {
		env[str(get(e, "name"))] = str(get(e, "value"))
		if str(get(e, "name")) == "vip_nodename" {
			env["vip_nodename"] = "fieldRef:" + str(get(e, "valueFrom.fieldRef.fieldPath"))
		}
	}
	want := map[string]string{
		"KUBERNETES_SERVICE_HOST": "localhost",
		"KUBERNETES_SERVICE_PORT": "7445",
		"address":                 vip,
		"port":                    strconv.Itoa(int(m.infraCluster.Spec.ControlPlaneEndpoint.Port)),
		"cp_enable":               "true",
		"vip_arp":                 "true",
		// kube-vip's identity is the node's name (the Machine name), from the downward API.
		"vip_nodename": "fieldRef:spec.nodeName",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("kube-vip env %s=%q, want %q", k, env[k], v)
		}
	}
	if !strings.HasPrefix(str(get(pod, "containers.0.image")), "ghcr.io/kube-vip/kube-vip:v") {
		t.Errorf("kube-vip image %v", get(pod, "containers.0.image"))
	}
}

func (m *manifest) checkWorkers(t *testing.T) {
	t.Helper()
	md := m.md
	if md.Spec.ClusterName != clusterName || md.Spec.Template.Spec.ClusterName != clusterName {
		t.Errorf("MachineDeployment clusterName %q/%q", md.Spec.ClusterName, md.Spec.Template.Spec.ClusterName)
	}
	br := md.Spec.Template.Spec.Bootstrap.ConfigRef
	if br.Kind != "TalosConfigTemplate" || br.APIGroup != "bootstrap.cluster.x-k8s.io" || !m.has(br.Kind, br.Name) {
		t.Errorf("MachineDeployment bootstrap configRef %+v", br)
	}
	ir := md.Spec.Template.Spec.InfrastructureRef
	if ir.Kind != "ProxmoxTalosMachineTemplate" || ir.APIGroup != infrav1.GroupVersion.Group || !m.has(ir.Kind, ir.Name) {
		t.Errorf("MachineDeployment infrastructureRef %+v", ir)
	}
	if ir.Name == str(get(m.controlPlane, "spec.infrastructureTemplate.name")) {
		t.Error("workers and control planes share a machine template")
	}
	w := m.workerConfig
	if str(get(w, "spec.template.spec.generateType")) != "worker" || str(get(w, "spec.template.spec.hostname.source")) != "MachineName" {
		t.Errorf("TalosConfigTemplate: generateType %v, hostname %v", get(w, "spec.template.spec.generateType"), get(w, "spec.template.spec.hostname"))
	}
	if str(get(w, "spec.template.spec.talosVersion")) != m.infraCluster.Spec.Talos.Version {
		t.Errorf("TalosConfigTemplate talosVersion %v differs from the image's", get(w, "spec.template.spec.talosVersion"))
	}
	checkCilium(t, "TalosConfigTemplate", patches(t, w, "spec.template.spec.strategicPatches"))
}

func (m *manifest) checkAddons(t *testing.T) {
	t.Helper()
	clusterLabels := labels.Set(m.cluster.Labels)
	for name, crs := range m.crs {
		sel, err := metav1.LabelSelectorAsSelector(&crs.Spec.ClusterSelector)
		if err != nil || sel.Empty() || !sel.Matches(clusterLabels) {
			t.Errorf("ClusterResourceSet %s: selector %v does not select the Cluster (labels %v)", name, crs.Spec.ClusterSelector, clusterLabels)
		}
		if crs.Spec.Strategy == "" {
			t.Errorf("ClusterResourceSet %s: no explicit strategy", name)
		}
		for _, r := range crs.Spec.Resources {
			switch {
			case r.Kind == "ConfigMap" && slices.Contains(externalConfigMaps, r.Name):
			case r.Kind == "Secret" && r.Name == clusterName+"-flux-git-auth":
			case m.has(r.Kind, r.Name):
			default:
				t.Errorf("ClusterResourceSet %s applies %s %s, which neither the template nor `make addons` provides", name, r.Kind, r.Name)
			}
		}
	}
	applied := map[string]bool{}
	for _, crs := range m.crs {
		for _, r := range crs.Spec.Resources {
			applied[r.Kind+"/"+r.Name] = true
		}
	}
	for _, cm := range externalConfigMaps {
		if !applied["ConfigMap/"+cm] {
			t.Errorf("no ClusterResourceSet applies ConfigMap %s", cm)
		}
	}
	for _, o := range m.objects {
		if o.Kind == "ConfigMap" && !applied["ConfigMap/"+o.Name] {
			t.Errorf("ConfigMap %s is applied by no ClusterResourceSet", o.Name)
		}
	}
}

// valueAt extracts, for a variable, the values found where the variable should land.
var valueAt = map[string]func(m *manifest) []string{
	"KUBERNETES_VERSION": func(m *manifest) []string {
		return []string{str(get(m.controlPlane, "spec.version")), m.md.Spec.Template.Spec.Version}
	},
	"CONTROL_PLANE_MACHINE_COUNT": func(m *manifest) []string { return []string{str(get(m.controlPlane, "spec.replicas"))} },
	"WORKER_MACHINE_COUNT":        func(m *manifest) []string { return []string{fmt.Sprint(deref(m.md.Spec.Replicas))} },
	"POD_CIDR":                    func(m *manifest) []string { return m.cluster.Spec.ClusterNetwork.Pods.CIDRBlocks },
	"SERVICE_CIDR":                func(m *manifest) []string { return m.cluster.Spec.ClusterNetwork.Services.CIDRBlocks },
	"PROXMOX_URL":                 func(m *manifest) []string { return []string{m.infraCluster.Spec.Proxmox.URL} },
	"CONTROL_PLANE_ENDPOINT_IP": func(m *manifest) []string {
		out := []string{m.infraCluster.Spec.ControlPlaneEndpoint.Host}
		if ex := vipExclusions(m); len(ex) == 3 {
			out = append(out, ex...)
		} else {
			out = append(out, fmt.Sprintf("VIP excluded %d times from the node subnets, want 3: %v", len(ex), ex))
		}
		if m.talosVIP != nil {
			out = append(out, str(m.talosVIP["name"]))
		}
		return append(out, kubeVIPEnv(m, "address")...)
	},
	"CONTROL_PLANE_ENDPOINT_PORT": func(m *manifest) []string {
		return append([]string{fmt.Sprint(m.infraCluster.Spec.ControlPlaneEndpoint.Port)}, kubeVIPEnv(m, "port")...)
	},
	"CONTROL_PLANE_ENDPOINT_INTERFACE": func(m *manifest) []string {
		if m.talosVIP != nil {
			return []string{str(m.talosVIP["link"])}
		}
		return kubeVIPEnv(m, "vip_interface")
	},
	"KUBE_VIP_VERSION": func(m *manifest) []string {
		for _, d := range m.kubeVIP {
			if str(d["kind"]) == "DaemonSet" {
				img := str(get(d, "spec.template.spec.containers.0.image"))
				return []string{img[strings.LastIndex(img, ":")+1:]}
			}
		}
		return nil
	},
	"CONTROL_PLANE_IP_RANGE": func(m *manifest) []string { return poolField(m, "control-plane", "addresses") },
	"WORKER_IP_RANGE":        func(m *manifest) []string { return poolField(m, "workers", "addresses") },
	"NODE_IP_PREFIX":         func(m *manifest) []string { return poolField(m, "", "prefix") },
	"NODE_GATEWAY":           func(m *manifest) []string { return poolField(m, "", "gateway") },
	"NODE_DNS_SERVER":        func(m *manifest) []string { return poolField(m, "", "dnsServers") },
	"NODE_SUBNET":            nodeSubnets,
	"NODE_BRIDGE": func(m *manifest) []string {
		return machineField(m, "", func(s infrav1.ProxmoxTalosMachineSpec) string { return s.NetworkDevices[0].Bridge })
	},
	"TALOS_VERSION":     func(m *manifest) []string { return []string{m.infraCluster.Spec.Talos.Version} },
	"TALOS_FACTORY_URL": func(m *manifest) []string { return []string{m.infraCluster.Spec.Talos.FactoryURL} },
	"TALOS_FACTORY_INSECURE_ALLOW_HTTP": func(m *manifest) []string {
		return []string{fmt.Sprint(m.infraCluster.Spec.Talos.InsecureAllowHTTP)}
	},
	"PROXMOX_IMAGE_STORAGE":  func(m *manifest) []string { return []string{m.infraCluster.Spec.ImageStorage} },
	"PROXMOX_ISO_STORAGE":    func(m *manifest) []string { return []string{m.infraCluster.Spec.ISOStorage} },
	"PROXMOX_IMAGE_TRANSFER": func(m *manifest) []string { return []string{string(m.infraCluster.Spec.ImageTransfer)} },
	"PROXMOX_DISK_STORAGE": func(m *manifest) []string {
		return machineField(m, "", func(s infrav1.ProxmoxTalosMachineSpec) string { return s.BootDisk.Storage })
	},
	"CONTROL_PLANE_CORES": func(m *manifest) []string {
		return machineField(m, "control-plane", func(s infrav1.ProxmoxTalosMachineSpec) string { return fmt.Sprint(s.Cores) })
	},
	"CONTROL_PLANE_MEMORY_MIB": func(m *manifest) []string {
		return machineField(m, "control-plane", func(s infrav1.ProxmoxTalosMachineSpec) string { return fmt.Sprint(s.MemoryMiB) })
	},
	"CONTROL_PLANE_DISK_GIB": func(m *manifest) []string {
		return machineField(m, "control-plane", func(s infrav1.ProxmoxTalosMachineSpec) string { return fmt.Sprint(s.BootDisk.SizeGiB) })
	},
	"WORKER_CORES": func(m *manifest) []string {
		return machineField(m, "workers", func(s infrav1.ProxmoxTalosMachineSpec) string { return fmt.Sprint(s.Cores) })
	},
	"WORKER_MEMORY_MIB": func(m *manifest) []string {
		return machineField(m, "workers", func(s infrav1.ProxmoxTalosMachineSpec) string { return fmt.Sprint(s.MemoryMiB) })
	},
	"WORKER_DISK_GIB": func(m *manifest) []string {
		return machineField(m, "workers", func(s infrav1.ProxmoxTalosMachineSpec) string { return fmt.Sprint(s.BootDisk.SizeGiB) })
	},
	"TAILSCALE_AUTH_KEY":     func(m *manifest) []string { return tailscaleEnv(m, "TS_AUTHKEY=", "") },
	"TAILSCALE_LOGIN_SERVER": func(m *manifest) []string { return tailscaleEnv(m, "TS_EXTRA_ARGS=", "--login-server=") },
	"METALLB_INGRESS_IP":     func(m *manifest) []string { return metallbPool(m, "ingress-pool", "/32") },
	"METALLB_DNS_IP":         func(m *manifest) []string { return metallbPool(m, "dns-pool", "/32") },
	"METALLB_SERVICES_RANGE": func(m *manifest) []string { return metallbPool(m, "services-pool", "") },
	"FLUX_GIT_URL":           func(m *manifest) []string { return fluxField(m, "GitRepository", "spec.url") },
	"FLUX_GIT_BRANCH":        func(m *manifest) []string { return fluxField(m, "GitRepository", "spec.ref.branch") },
	"FLUX_GIT_PATH":          func(m *manifest) []string { return fluxField(m, "Kustomization", "spec.path") },
	"MHC_UNHEALTHY_TIMEOUT_SECONDS": func(m *manifest) []string {
		var out []string
		for _, name := range healthCheckNames {
			for _, c := range m.mhcs[name].Spec.Checks.UnhealthyNodeConditions {
				out = append(out, fmt.Sprint(ptr.Deref(c.TimeoutSeconds, -1)))
			}
		}
		return out
	},
	"MHC_NODE_STARTUP_TIMEOUT_SECONDS": func(m *manifest) []string {
		var out []string
		for _, name := range healthCheckNames {
			out = append(out, fmt.Sprint(ptr.Deref(m.mhcs[name].Spec.Checks.NodeStartupTimeoutSeconds, -1)))
		}
		return out
	},
	"WORKER_MHC_MAX_UNHEALTHY": func(m *manifest) []string {
		if v := m.mhcs[clusterName+"-workers"].Spec.Remediation.TriggerIf.UnhealthyLessThanOrEqualTo; v != nil {
			return []string{v.String()}
		}
		return nil
	},
}

// defaultWorkers is WORKER_MACHINE_COUNT's documented default.
const defaultWorkers = 2

// healthCheckNames are the flavors' MachineHealthChecks.
var healthCheckNames = []string{clusterName + "-workers", clusterName + "-control-plane"}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func kubeVIPEnv(m *manifest, name string) []string {
	for _, d := range m.kubeVIP {
		for _, e := range asList(get(d, "spec.template.spec.containers.0.env")) {
			if str(get(e, "name")) == name {
				return []string{str(get(e, "value"))}
			}
		}
	}
	return nil
}

// poolField reads a field of one pool, or of every pool when pool is "".
func poolField(m *manifest, pool, fieldName string) []string {
	var out []string
	for _, p := range m.infraCluster.Spec.IPPools {
		if pool != "" && p.Name != pool {
			continue
		}
		switch fieldName {
		case "addresses":
			out = append(out, p.Addresses...)
		case "prefix":
			out = append(out, fmt.Sprint(p.Prefix))
		case "gateway":
			out = append(out, p.Gateway)
		case "dnsServers":
			out = append(out, p.DNSServers...)
		}
	}
	return out
}

// machineField reads a field of the machine template named <cluster>-<suffix>, or of both.
func machineField(m *manifest, suffix string, f func(infrav1.ProxmoxTalosMachineSpec) string) []string {
	var out []string
	for name, mt := range m.machineTmpls {
		if suffix == "" || name == clusterName+"-"+suffix {
			out = append(out, f(mt.Spec.Template.Spec))
		}
	}
	return out
}

// nodeSubnets lists the subnets kubelet and etcd may pick from (negated entries left out).
func nodeSubnets(m *manifest) []string {
	var out []string
	for _, s := range nodeIPSubnetEntries(m) {
		if !strings.HasPrefix(s, "!") {
			out = append(out, s)
		}
	}
	return out
}

// vipExclusions lists the addresses excluded ("!<ip>/32") from kubelet's and etcd's subnets:
// the VIP, once in each of the three lists (control plane kubelet and etcd, worker kubelet).
func vipExclusions(m *manifest) []string {
	var out []string
	for _, s := range nodeIPSubnetEntries(m) {
		if ip, ok := strings.CutPrefix(s, "!"); ok {
			out = append(out, strings.TrimSuffix(ip, "/32"))
		}
	}
	return out
}

// nodeIPSubnetEntries is every entry of validSubnets and advertisedSubnets in the patches.
func nodeIPSubnetEntries(m *manifest) []string {
	var out []string
	docs := []any{}
	for _, p := range stringList(get(m.controlPlane, "spec.controlPlaneConfig.controlplane.strategicPatches")) {
		docs = append(docs, p)
	}
	for _, p := range stringList(get(m.workerConfig, "spec.template.spec.strategicPatches")) {
		docs = append(docs, p)
	}
	for _, p := range docs {
		var d map[string]any
		if yaml.Unmarshal([]byte(str(p)), &d) != nil {
			continue
		}
		out = append(out, stringList(get(d, "machine.kubelet.nodeIP.validSubnets"))...)
		out = append(out, stringList(get(d, "cluster.etcd.advertisedSubnets"))...)
	}
	return out
}

func tailscaleEnv(m *manifest, prefix, strip string) []string {
	var out []string
	for _, d := range m.tailscaleDocs {
		for _, e := range stringList(d["environment"]) {
			if strings.HasPrefix(e, prefix) {
				out = append(out, strings.TrimPrefix(strings.TrimPrefix(e, prefix), strip))
			}
		}
	}
	return out
}

func metallbPool(m *manifest, name, strip string) []string {
	for _, d := range m.metallbPools {
		if str(d["kind"]) == "IPAddressPool" && str(get(d, "metadata.name")) == name {
			var out []string
			for _, a := range stringList(get(d, "spec.addresses")) {
				out = append(out, strings.TrimSuffix(a, strip))
			}
			return out
		}
	}
	return nil
}

func fluxField(m *manifest, kind, path string) []string {
	for _, d := range m.fluxSync {
		if str(d["kind"]) == kind {
			return []string{str(get(d, path))}
		}
	}
	return nil
}

// checkValues proves each variable's value landed in every place the variable feeds.
func (m *manifest) checkValues(t *testing.T, vals map[string]string) {
	t.Helper()
	for name, want := range vals {
		at, ok := valueAt[name]
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
	for name := range valueAt {
		if name == "KUBE_VIP_VERSION" && m.kubeVIP == nil {
			continue
		}
		if _, ok := vals[name]; !ok {
			t.Errorf("variable %s was not set by the test", name)
		}
	}
}
