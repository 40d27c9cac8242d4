package pvesim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim/internal/apischema"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

type schemaNode struct {
	Path string `json:"path"`
	Info map[string]struct {
		Parameters struct {
			Properties map[string]struct {
				Type string `json:"type"`
			} `json:"properties"`
		} `json:"parameters"`
	} `json:"info"`
	Children []schemaNode `json:"children"`
}

func loadSchemaIndex(t *testing.T, file string) map[string]schemaNode {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var roots []schemaNode
	if err := json.Unmarshal(b, &roots); err != nil {
		t.Fatal(err)
	}
	idx := map[string]schemaNode{}
	var walk func(n schemaNode)
	walk = func(n schemaNode) {
		idx[n.Path] = n
		for _, c := range n.Children {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return idx
}

// TestConformance walks every served route and checks method, parameter
// names and types against both official schema versions.
func TestConformance(t *testing.T) {
	dir, ok, err := apischema.SchemaDir()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		testenv.SkipOrFail(t, "PVE schema files not found at %s (expected <repo>/../shared/pve-api); skipping conformance", dir)
	}
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	served := s.Routes()
	g := NewWithT(t)
	g.Expect(served).To(HaveLen(len(apischema.Served)))
	for _, version := range []string{"8.4", "9.1"} {
		idx := loadSchemaIndex(t, filepath.Join(dir, "pve-"+version+"-apidata.json"))
		for _, key := range served {
			method, path, _ := strings.Cut(key, " ")
			t.Run(version+" "+key, func(t *testing.T) {
				g := NewWithT(t)
				node, ok := idx[path]
				g.Expect(ok).To(BeTrue(), "path missing in %s schema", version)
				m, ok := node.Info[method]
				g.Expect(ok).To(BeTrue(), "method missing in %s schema", version)
				rt := s.table.Find(method, path)
				g.Expect(rt).NotTo(BeNil())
				var names []string
				for _, p := range rt.Params {
					prop, ok := m.Parameters.Properties[p.Name]
					if version == "8.4" && p.Only91 {
						g.Expect(ok).To(BeFalse(), "%s marked 9.1-only but present in 8.4", p.Name)
						continue
					}
					g.Expect(ok).To(BeTrue(), "param %s not in %s schema", p.Name, version)
					want := prop.Type
					if want == "" {
						want = "string"
					}
					g.Expect(p.Type).To(Equal(want), "type of %s in %s", p.Name, version)
					names = append(names, p.Name)
				}
				var schemaNames []string
				for n := range m.Parameters.Properties {
					schemaNames = append(schemaNames, n)
				}
				sort.Strings(schemaNames)
				if version == "9.1" {
					g.Expect(names).To(Equal(schemaNames))
				} else {
					// 8.4 params pvesim's table lacks would be accepted by 8.4 but
					// rejected by the simulator: there must be none.
					g.Expect(names).To(ConsistOf(schemaNames))
				}
			})
		}
	}
}
