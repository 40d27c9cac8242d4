package v1beta1_test

import (
	"context"
	"os"
	"testing"

	. "github.com/onsi/gomega"

	apiextensions "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// TestProviderIDTransitionRule compiles the generated ProxmoxTalosMachine CRD the way the
// API server does (schema and CEL cost validation) and evaluates its update rules: the
// controller may replace its proxmox://<uuid> with a cloud-controller-manager's
// proxmox://<region>/<vmid> or another spelling of the same uuid, and nothing else; an
// adopted value is immutable again.
func TestProviderIDTransitionRule(t *testing.T) {
	raw, _ := os.ReadFile("../../config/crd/bases/infrastructure.cluster.x-k8s.io_proxmoxtalosmachines.yaml")
	var v1 apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &v1); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	_ = apiextensionsv1.AddToScheme(s)
	_ = apiextensions.AddToScheme(s)
	var internal apiextensions.CustomResourceDefinition
	if err := s.Convert(&v1, &internal, nil); err != nil {
		t.Fatal(err)
	}
	internal.Status.StoredVersions = []string{"v1beta1"}
	if errs := validation.ValidateCustomResourceDefinition(context.Background(), &internal); len(errs) > 0 {
		t.Fatalf("CRD invalid: %v", errs)
	}
	var props apiextensions.JSONSchemaProps
	for _, ver := range internal.Spec.Versions {
		if ver.Schema != nil {
			props = *ver.Schema.OpenAPIV3Schema
		}
	}
	if internal.Spec.Validation != nil {
		props = *internal.Spec.Validation.OpenAPIV3Schema
	}
	ss, err := schema.NewStructural(&props)
	if err != nil {
		t.Fatal(err)
	}
	val := cel.NewValidator(ss, true, 1000000)
	obj := func(pid string) map[string]any {
		return map[string]any{"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "ProxmoxTalosMachine",
			"metadata": map[string]any{"name": "m"},
			"spec":     map[string]any{"providerID": pid, "memoryMiB": int64(2048), "vmID": int64(123)}}
	}
	old := "proxmox://6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
	tests := []struct {
		from, to string
		allowed  bool
	}{
		{old, old, true},
		{old, "proxmox://region-1/123", true},
		{old, "proxmox:///123", true},
		{old, "proxmox://6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F", true},
		{old, "proxmox://00000000-0000-0000-0000-000000000001", false},
		{old, "aws://x", false},
		{old, "proxmox://region-1/abc", false},
		{"proxmox://region-1/123", "proxmox://region-2/123", false},
		{"proxmox://region-1/123", old, false},
	}
	for _, tt := range tests {
		t.Run(tt.from+" to "+tt.to, func(t *testing.T) {
			g := NewWithT(t)
			errs, _ := val.Validate(context.Background(), field.NewPath(""), ss, obj(tt.to), obj(tt.from), 100000000)
			if tt.allowed {
				g.Expect(errs).To(BeEmpty())
			} else {
				g.Expect(errs.ToAggregate()).To(MatchError(ContainSubstring("providerID is immutable once set")))
			}
		})
	}
}
