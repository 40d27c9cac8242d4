// This file is compiled only inside a copy of the cluster autoscaler's own module
// (k8s.io/autoscaler/cluster-autoscaler, package cloudprovider/clusterapi), by
// hack/autoscaler-contract.sh: it drives the autoscaler's real Cluster API provider (its
// node groups, TemplateNodeInfo, IncreaseSize) with the ProxmoxTalosMachineTemplate status
// this provider publishes (test/autoscaler/testdata/workers.json, which
// test/autoscaler keeps equal to what internal/machinetemplate computes for the default
// flavor's workers). It lives under testdata/ so this repository's module never builds it.

package clusterapi

import (
	"encoding/json"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

type proxmoxTalosFixture struct {
	// Annotations are the node-group annotations the flavors document on the workers
	// MachineDeployment.
	Annotations map[string]string `json:"annotations"`
	// Template is the workers ProxmoxTalosMachineTemplate with the status the provider
	// publishes.
	Template map[string]any `json:"template"`
}

func TestProxmoxTalosScaleFromZero(t *testing.T) {
	path := os.Getenv("PROXMOXTALOS_CONTRACT_FIXTURE")
	if path == "" {
		t.Fatal("PROXMOXTALOS_CONTRACT_FIXTURE is unset: run hack/autoscaler-contract.sh")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var fx proxmoxTalosFixture
	if err := json.Unmarshal(raw, &fx); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	tmpl := &unstructured.Unstructured{Object: fx.Template}
	if tmpl.GetKind() != "ProxmoxTalosMachineTemplate" {
		t.Fatalf("fixture holds a %q", tmpl.GetKind())
	}
	// Exactly the status.capacity map the provider writes, as strings.
	capacity, found, err := unstructured.NestedStringMap(tmpl.Object, "status", "capacity")
	if err != nil || !found {
		t.Fatalf("status.capacity: found=%v err=%v", found, err)
	}

	// A MachineDeployment with zero replicas, the documented annotations and, as its
	// infrastructure template, one carrying that status: the autoscaler's own fixtures.
	cfg := createMachineDeploymentTestConfig(testNamespace, RandomString(6), RandomString(6), 0, fx.Annotations, capacity)
	controller, stop := mustCreateTestController(t, cfg)
	defer stop()

	nodegroups, err := controller.nodeGroups()
	if err != nil {
		t.Fatalf("nodeGroups: %v", err)
	}
	if len(nodegroups) != 1 {
		t.Fatalf("the autoscaler sees %d node groups, want 1 (a MachineDeployment at 0 with min 0 is one only when it can scale from zero)", len(nodegroups))
	}
	ng := nodegroups[0]
	if ng.MinSize() != 0 || ng.MaxSize() < 1 {
		t.Fatalf("node group bounds %d..%d, want 0..>=1", ng.MinSize(), ng.MaxSize())
	}
	t.Logf("node group %s: min %d, max %d", ng.Id(), ng.MinSize(), ng.MaxSize())

	info, err := ng.TemplateNodeInfo()
	if err != nil {
		t.Fatalf("TemplateNodeInfo (the template node a scale-up from zero is simulated with): %v", err)
	}
	node := info.Node()
	for name, s := range capacity {
		want := resource.MustParse(s)
		got, ok := node.Status.Allocatable[corev1.ResourceName(name)]
		if !ok || got.Cmp(want) != 0 {
			t.Errorf("template node allocatable %s = %v (present %v), want %s", name, got.String(), ok, s)
		}
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage} {
		if _, ok := node.Status.Capacity[name]; !ok {
			t.Errorf("template node has no %s capacity", name)
		}
	}
	t.Logf("template node: capacity %v, labels %v", node.Status.Capacity, node.Labels)

	// The scale-up itself: from 0 to 1 through the MachineDeployment's scale subresource.
	if err := ng.IncreaseSize(1); err != nil {
		t.Fatalf("IncreaseSize(1) from zero: %v", err)
	}
	size, err := ng.TargetSize()
	if err != nil || size != 1 {
		t.Fatalf("target size after IncreaseSize(1): %d, %v", size, err)
	}
}
