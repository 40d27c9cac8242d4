package autoscaler

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machinetemplate"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

var (
	variable    = regexp.MustCompile(`\$\{([A-Z0-9_]+)(?::=([^}]*))?\}`)
	templateDoc = regexp.MustCompile(`(?m)^kind: ProxmoxTalosMachineTemplate$`)
	annotation  = regexp.MustCompile(`(?m)^\s*#\s+(cluster\.x-k8s\.io/cluster-api-autoscaler-node-group-m(?:in|ax)-size): "(\d+)"\s*$`)
)

// TestContractFixtureIsCurrent: testdata/workers.json is what the provider publishes for the
// default flavor's workers template (UPDATE_FIXTURE=1 rewrites it).
func TestContractFixtureIsCurrent(t *testing.T) {
	g := NewWithT(t)
	root := testenv.RepoRoot()
	src, err := os.ReadFile(filepath.Join(root, "templates", "src", "workers.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	// clusterctl's substitution with every variable at its default (those without one get
	// a name: none of them is in the machine template's spec).
	rendered := variable.ReplaceAllStringFunc(string(src), func(m string) string {
		sub := variable.FindStringSubmatch(m)
		if strings.Contains(m, ":=") {
			return sub[2]
		}
		return strings.ToLower(strings.ReplaceAll(sub[1], "_", "-"))
	})

	var tmpl *infrav1.ProxmoxTalosMachineTemplate
	for _, doc := range strings.Split(rendered, "\n---\n") {
		if !templateDoc.MatchString(doc) {
			continue
		}
		tmpl = &infrav1.ProxmoxTalosMachineTemplate{}
		g.Expect(yaml.UnmarshalStrict([]byte(doc), tmpl)).To(Succeed())
	}
	g.Expect(tmpl).NotTo(BeNil(), "workers.yaml has a ProxmoxTalosMachineTemplate")
	g.Expect(tmpl.Spec.Template.Spec.Cores).To(BeNumerically(">", 0), "variables rendered")
	// What the API server stores (the defaulting webhook) and the controller publishes; the
	// default flavor's ProxmoxTalosCluster leaves talos.architecture unset.
	tmpl.Spec.Template.Spec.Default()
	tmpl.Status = machinetemplate.Status(tmpl.Spec.Template.Spec, &infrav1.TalosImageSpec{})
	tmpl.APIVersion, tmpl.Kind = infrav1.GroupVersion.String(), "ProxmoxTalosMachineTemplate"
	tmpl.Name, tmpl.Namespace = "workers", ""

	annotations := map[string]string{}
	for _, m := range annotation.FindAllStringSubmatch(string(src), -1) {
		annotations[m[1]] = m[2]
	}
	g.Expect(annotations).To(HaveKey(clusterv1.AutoscalerMinSizeAnnotation))
	g.Expect(annotations).To(HaveKey(clusterv1.AutoscalerMaxSizeAnnotation))

	var template map[string]any
	b, err := json.Marshal(tmpl)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(json.Unmarshal(b, &template)).To(Succeed())
	delete(template["metadata"].(map[string]any), "creationTimestamp")
	want, err := json.MarshalIndent(map[string]any{"annotations": annotations, "template": template}, "", "  ")
	g.Expect(err).NotTo(HaveOccurred())
	want = append(want, '\n')

	path := filepath.Join(root, "test", "autoscaler", "testdata", "workers.json")
	if os.Getenv("UPDATE_FIXTURE") != "" {
		g.Expect(os.WriteFile(path, want, 0o644)).To(Succeed())
	}
	got, err := os.ReadFile(path)
	g.Expect(err).NotTo(HaveOccurred(), "run UPDATE_FIXTURE=1 go test ./test/autoscaler/")
	g.Expect(bytes.Equal(got, want)).To(BeTrue(), "%s is stale: run UPDATE_FIXTURE=1 go test ./test/autoscaler/\ngot:\n%s\nwant:\n%s", path, got, want)
}
