// Package config_test checks what `make release` ships to clusterctl users: the kustomize
// output, metadata.yaml and clusterctl-settings.json.
package config_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	clusterctlv1 "sigs.k8s.io/cluster-api/cmd/clusterctl/api/v1alpha3"
)

// renderDefault renders config/default (`make release` does the same after pinning the image).
func renderDefault(t *testing.T) ([]byte, []unstructured.Unstructured) {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is needed to render config/default (kubectl kustomize): %v", err)
	}
	out, err := exec.Command(kubectl, "kustomize", "default").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize config/default failed: %v\n%s", err, out)
	}
	var objs []unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decoding rendered components: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return out, objs
}

func TestComponentsFollowClusterctlConventions(t *testing.T) {
	g := NewWithT(t)
	raw, objs := renderDefault(t)

	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		// clusterctl labels every object of a provider; kustomize adds it here.
		g.Expect(o.GetLabels()).To(HaveKeyWithValue("cluster.x-k8s.io/provider", "infrastructure-proxmox-talos"), "%s %s", o.GetKind(), o.GetName())
		if o.GetKind() == "CustomResourceDefinition" {
			// Cluster API finds the contract version by this label only.
			g.Expect(o.GetLabels()).To(HaveKeyWithValue("cluster.x-k8s.io/v1beta2", "v1beta1"), o.GetName())
		}
	}
	g.Expect(kinds).To(HaveKeyWithValue("Namespace", 1), "clusterctl needs exactly one Namespace")
	g.Expect(kinds).To(HaveKeyWithValue("CustomResourceDefinition", 4))
	g.Expect(kinds).To(HaveKeyWithValue("Deployment", 1))
	g.Expect(kinds).To(HaveKeyWithValue("MutatingWebhookConfiguration", 1))
	g.Expect(kinds).To(HaveKeyWithValue("ValidatingWebhookConfiguration", 1))
	g.Expect(kinds).To(HaveKeyWithValue("ClusterRole", 1))
	g.Expect(kinds).To(HaveKeyWithValue("Certificate", 1))

	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		g.Expect(containers).To(HaveLen(1))
		g.Expect(containers[0].(map[string]any)["name"]).To(Equal("manager"), "clusterctl expects the manager container to be named manager")
	}
	// Users tune the provider through clusterctl variables prefixed with the provider name.
	g.Expect(string(raw)).To(ContainSubstring("${PROXMOX_TALOS_API_QPS:=50}"))
	// clusterctl parses the image of every container (its `images:` configuration overrides
	// them); a ${VAR} there fails `clusterctl generate provider --describe`.
	g.Expect(string(raw)).To(ContainSubstring("image: ghcr.io/proxmox-talos/cluster-api-provider-proxmox-talos:dev\n"))
	g.Expect(string(raw)).NotTo(MatchRegexp(`image: .*\$\{`))

	// Names that cannot be mistaken for another provider's (ionos' capmox uses capmox-).
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace":
			g.Expect(o.GetName()).To(Equal("capi-proxmox-talos-system"))
		case "CustomResourceDefinition", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding":
			if o.GetKind() != "CustomResourceDefinition" {
				g.Expect(o.GetName()).To(HavePrefix("capi-proxmox-talos-"))
			}
		default:
			g.Expect(o.GetNamespace()).To(Equal("capi-proxmox-talos-system"), "%s %s", o.GetKind(), o.GetName())
			g.Expect(o.GetName()).To(HavePrefix("capi-proxmox-talos-"), "%s", o.GetKind())
		}
	}
	g.Expect(string(raw)).NotTo(ContainSubstring("capmox"))
}

func TestCRDsMatchTheirSources(t *testing.T) {
	// The CRDs in config/crd/bases are generated; the rendered ones must add only labels.
	g := NewWithT(t)
	_, objs := renderDefault(t)
	bases, err := filepath.Glob(filepath.Join("crd", "bases", "*.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(bases).To(HaveLen(4))
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		names, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
		g.Expect(names).To(HavePrefix("ProxmoxTalos"))
		cols, _, _ := unstructured.NestedSlice(o.Object, "spec", "versions")
		g.Expect(cols).To(HaveLen(1), "one served version, v1beta1")
	}
}

func TestMetadataAndClusterctlSettingsParse(t *testing.T) {
	g := NewWithT(t)
	raw, err := os.ReadFile(filepath.Join("..", "metadata.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	var md clusterctlv1.Metadata
	g.Expect(yaml.UnmarshalStrict(raw, &md)).To(Succeed())
	g.Expect(md.APIVersion).To(Equal("clusterctl.cluster.x-k8s.io/v1alpha3"))
	g.Expect(md.Kind).To(Equal("Metadata"))
	g.Expect(md.ReleaseSeries).NotTo(BeEmpty())
	for _, rs := range md.ReleaseSeries {
		g.Expect(rs.Contract).To(Equal("v1beta2"))
	}

	raw, err = os.ReadFile(filepath.Join("..", "clusterctl-settings.json"))
	g.Expect(err).NotTo(HaveOccurred())
	var settings struct {
		Name   string `json:"name"`
		Config struct {
			ComponentsFile string `json:"componentsFile"`
			NextVersion    string `json:"nextVersion"`
		} `json:"config"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	g.Expect(dec.Decode(&settings)).To(Succeed())
	// "proxmox" and "talos" are built-in clusterctl provider names.
	g.Expect(settings.Name).To(Equal("infrastructure-proxmox-talos"))
	g.Expect(settings.Config.ComponentsFile).To(Equal("infrastructure-components.yaml"))
	g.Expect(strings.HasPrefix(settings.Config.NextVersion, "v")).To(BeTrue())
	g.Expect(md.ReleaseSeries[0].Major).To(BeNumerically(">=", 0))
}
