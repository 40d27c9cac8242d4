package templates

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/yaml"
)

// crdSchemas maps "group/version Kind" to the openAPIV3Schema of that version.
type crdSchemas map[string]map[string]any

var (
	schemasOnce sync.Once
	schemas     crdSchemas
	schemaDirs  []string
)

// loadSchemas reads our CRDs (config/crd/bases) and, where hack/lab-binaries.sh has cached
// them, those of CAPI core, CABPT and CACPPT.
func loadSchemas(t *testing.T) crdSchemas {
	t.Helper()
	schemasOnce.Do(func() {
		root := repoRoot(t)
		schemas = crdSchemas{}
		// The optional TalosControlPlaneTemplate CRD (hack/gen-tcp-template-crd.go) validates the
		// topology flavor's ClusterClass templates.
		dirs := []string{filepath.Join(root, "config", "crd", "bases"), filepath.Join(root, "config", "optional", "taloscontrolplanetemplate")}
		for name, sub := range map[string]string{"capi-core": "core/config/crd/bases", "cabpt": "config/crd/bases", "cacppt": "config/crd/bases"} {
			out, err := exec.Command("bash", filepath.Join(root, "hack", "lab-binaries.sh"), "--dir", name).Output()
			if err == nil {
				dirs = append(dirs, filepath.Join(strings.TrimSpace(string(out)), sub))
			}
		}
		for _, dir := range dirs {
			files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
			if len(files) > 0 {
				schemaDirs = append(schemaDirs, dir)
			}
			for _, f := range files {
				raw, err := os.ReadFile(f)
				if err != nil {
					continue
				}
				for _, doc := range splitYAML(t, f, raw) {
					var crd map[string]any
					if yaml.Unmarshal(doc, &crd) != nil || str(crd["kind"]) != "CustomResourceDefinition" {
						continue
					}
					group, kind := str(get(crd, "spec.group")), str(get(crd, "spec.names.kind"))
					for _, v := range asList(get(crd, "spec.versions")) {
						if s, ok := get(v, "schema.openAPIV3Schema").(map[string]any); ok {
							schemas[group+"/"+str(get(v, "name"))+" "+kind] = s
						}
					}
				}
			}
		}
	})
	return schemas
}

// checkSchemas validates every custom resource against its CRD schema when the CRD is known:
// unknown fields (what the API server would prune silently), types, enums and required fields.
// Our own kinds must always be checked.
func checkSchemas(t *testing.T, objects []object) {
	t.Helper()
	all := loadSchemas(t)
	var unchecked []string
	for _, o := range objects {
		apiVersion := str(o.u["apiVersion"])
		if !strings.Contains(apiVersion, "/") {
			continue // core kinds
		}
		s, ok := all[apiVersion+" "+o.Kind]
		if !ok {
			if strings.HasPrefix(apiVersion, "infrastructure.cluster.x-k8s.io/") {
				t.Errorf("no CRD schema for our kind %s %s in config/crd/bases", apiVersion, o.Kind)
			}
			unchecked = append(unchecked, apiVersion+" "+o.Kind)
			continue
		}
		var errs []string
		validateSchema(o.u, s, "", true, &errs)
		for _, e := range errs {
			t.Errorf("%s %s: %s", o.Kind, o.Name, e)
		}
	}
	if len(unchecked) > 0 {
		sort.Strings(unchecked)
		t.Logf("no CRD schema (run hack/lab-binaries.sh) for: %s; schemas from %v", strings.Join(slices.Compact(unchecked), ", "), schemaDirs)
	}
}

func validateSchema(v any, s map[string]any, path string, root bool, errs *[]string) {
	at := path
	if at == "" {
		at = "."
	}
	if v == nil {
		return // null: the API server drops it
	}
	if s["x-kubernetes-int-or-string"] == true {
		switch v.(type) {
		case string, float64:
		default:
			*errs = append(*errs, fmt.Sprintf("%s: want int or string, got %T", at, v))
		}
		return
	}
	if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, v) {
		*errs = append(*errs, fmt.Sprintf("%s: %v is not one of %v", at, v, enum))
	}
	switch str(s["type"]) {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want object, got %T", at, v))
			return
		}
		props, _ := s["properties"].(map[string]any)
		for _, r := range stringList(s["required"]) {
			if _, ok := obj[r]; !ok {
				*errs = append(*errs, fmt.Sprintf("%s: required field %s missing", at, r))
			}
		}
		for k, val := range obj {
			if root && k == "metadata" {
				continue
			}
			switch ps, _ := props[k].(map[string]any); {
			case ps != nil:
				validateSchema(val, ps, path+"."+k, false, errs)
			case s["additionalProperties"] != nil:
				if as, ok := s["additionalProperties"].(map[string]any); ok {
					validateSchema(val, as, path+"."+k, false, errs)
				}
			case s["x-kubernetes-preserve-unknown-fields"] == true:
			default:
				*errs = append(*errs, fmt.Sprintf("%s: unknown field %q (the API server would drop it)", at, k))
			}
		}
	case "array":
		list, ok := v.([]any)
		if !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want array, got %T", at, v))
			return
		}
		if is, ok := s["items"].(map[string]any); ok {
			for i, e := range list {
				validateSchema(e, is, fmt.Sprintf("%s[%d]", path, i), false, errs)
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want string, got %T %v", at, v, v))
		}
	case "integer":
		if f, ok := v.(float64); !ok || f != math.Trunc(f) {
			*errs = append(*errs, fmt.Sprintf("%s: want integer, got %T %v", at, v, v))
		}
	case "number":
		if _, ok := v.(float64); !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want number, got %T", at, v))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want boolean, got %T %v", at, v, v))
		}
	}
}
