//go:build ignore

// gen-tcp-template-crd writes the optional TalosControlPlaneTemplate CRD: a template kind that
// released CACPPT (v0.5.x) does not ship (siderolabs/cluster-api-control-plane-provider-talos
// #245) but a ClusterClass needs for its control plane. Its spec.template.spec schema is the
// TalosControlPlane spec schema of CACPPT's own CRD, so the topology controller clones a
// template into a TalosControlPlane that CACPPT's CRD (and controller) accepts.
//
//	go run hack/gen-tcp-template-crd.go                 # rewrite the committed CRD
//	go run hack/gen-tcp-template-crd.go -o FILE         # write elsewhere (the tests compare)
//	go run hack/gen-tcp-template-crd.go -cacppt DIR     # CACPPT tree (default: hack/lab-binaries.sh --dir cacppt)
//
// Only a template kind is added: no controller serves it, CAPI's topology controller only
// reads it. See docs/clusterclass.md.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

const (
	cacpptCRD = "config/crd/bases/controlplane.cluster.x-k8s.io_taloscontrolplanes.yaml"
	outFile   = "config/optional/taloscontrolplanetemplate/controlplane.cluster.x-k8s.io_taloscontrolplanetemplates.yaml"
)

// topologyOwned are TalosControlPlane spec fields the topology controller sets on the
// TalosControlPlane itself (from Cluster.spec.topology): a template must not carry them, like
// KubeadmControlPlaneTemplate, and without them they are not required either.
var topologyOwned = []string{"replicas", "version"}

func main() {
	cacppt := flag.String("cacppt", "", "CACPPT module tree holding "+cacpptCRD+" (default: hack/lab-binaries.sh --dir cacppt)")
	out := flag.String("o", outFile, "output file")
	flag.Parse()
	if err := run(*cacppt, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gen-tcp-template-crd:", err)
		os.Exit(1)
	}
}

func run(cacppt, out string) error {
	if cacppt == "" {
		b, err := exec.Command("bash", "hack/lab-binaries.sh", "--dir", "cacppt").Output()
		if err != nil {
			return fmt.Errorf("hack/lab-binaries.sh --dir cacppt: %w", err)
		}
		cacppt = strings.TrimSpace(string(b))
	}
	raw, err := os.ReadFile(filepath.Join(cacppt, cacpptCRD))
	if err != nil {
		return fmt.Errorf("%w (run hack/lab-binaries.sh cacppt)", err)
	}
	var src map[string]any
	if err := yaml.Unmarshal(raw, &src); err != nil {
		return err
	}
	versions, _ := dig(src, "spec", "versions").([]any)
	var version string
	var tcpSpec map[string]any
	for _, v := range versions {
		vm, _ := v.(map[string]any)
		if vm["storage"] == true {
			version, _ = vm["name"].(string)
			tcpSpec, _ = dig(vm, "schema", "openAPIV3Schema", "properties", "spec").(map[string]any)
		}
	}
	if version != "v1alpha3" || tcpSpec == nil {
		return fmt.Errorf("%s: want storage version v1alpha3 with a spec schema, got %q", cacpptCRD, version)
	}

	spec := deepCopy(tcpSpec)
	props, _ := spec["properties"].(map[string]any)
	for _, f := range topologyOwned {
		if _, ok := props[f]; !ok {
			return fmt.Errorf("TalosControlPlane spec has no %q any more: review the generator", f)
		}
		delete(props, f)
	}
	if req, ok := spec["required"].([]any); ok {
		spec["required"] = slices.DeleteFunc(req, func(r any) bool { s, _ := r.(string); return slices.Contains(topologyOwned, s) })
	}
	spec["description"] = "TalosControlPlaneSpec of CACPPT v1alpha3 without replicas and version, which the topology controller sets on the TalosControlPlane."

	crd := map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata": map[string]any{
			"name": "taloscontrolplanetemplates.controlplane.cluster.x-k8s.io",
			"labels": map[string]any{
				// CAPI resolves a template's contract from its CRD's label, like CACPPT's own
				// CRD: v1alpha3 implements the v1beta1 contract.
				"cluster.x-k8s.io/v1beta1": "v1alpha3",
				// clusterctl move discovers the kinds of CRDs with this label.
				"clusterctl.cluster.x-k8s.io": "",
			},
		},
		"spec": map[string]any{
			"group": "controlplane.cluster.x-k8s.io",
			"names": map[string]any{
				"categories": []any{"cluster-api"},
				"kind":       "TalosControlPlaneTemplate",
				"listKind":   "TalosControlPlaneTemplateList",
				"plural":     "taloscontrolplanetemplates",
				"singular":   "taloscontrolplanetemplate",
			},
			"scope": "Namespaced",
			"versions": []any{map[string]any{
				"name":    "v1alpha3",
				"served":  true,
				"storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"description": "TalosControlPlaneTemplate is a template for a TalosControlPlane (CACPPT v1alpha3), for ClusterClass. Shipped by cluster-api-provider-proxmox-talos; no controller serves it.",
					"type":        "object",
					"properties": map[string]any{
						"apiVersion": map[string]any{"type": "string"},
						"kind":       map[string]any{"type": "string"},
						"metadata":   map[string]any{"type": "object"},
						"spec": map[string]any{
							"type":     "object",
							"required": []any{"template"},
							"properties": map[string]any{
								"template": map[string]any{
									"type":     "object",
									"required": []any{"spec"},
									"properties": map[string]any{
										"metadata": map[string]any{
											"description": "Labels and annotations of the TalosControlPlane.",
											"type":        "object",
											"properties": map[string]any{
												"labels":      map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "string"}},
												"annotations": map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "string"}},
											},
										},
										"spec": spec,
									},
								},
							},
						},
					},
				}},
			}},
		},
	}
	body, err := yaml.Marshal(crd)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString("# Generated by hack/gen-tcp-template-crd.go from CACPPT's " + filepath.Base(cacpptCRD) + "\n")
	buf.WriteString("# (" + filepath.Base(cacppt) + "); do not edit. See docs/clusterclass.md.\n---\n")
	buf.Write(body)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func deepCopy(m map[string]any) map[string]any {
	b, _ := yaml.Marshal(m)
	var out map[string]any
	_ = yaml.Unmarshal(b, &out)
	return out
}
