package lab

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// The address check is the lab's guarantee that nothing leaves loopback: it must catch an
// address hidden in any string, and let loopback ones and the allocation CIDRs through.
func TestCheckLoopbackOnly(t *testing.T) {
	obj := func(v map[string]any) []*unstructured.Unstructured {
		return []*unstructured.Unstructured{{Object: map[string]any{"kind": "ConfigMap", "metadata": map[string]any{"name": "x"}, "data": v}}}
	}
	ok := obj(map[string]any{
		"a": "https://127.0.0.1:8006", "b": "127.10.1.1-127.10.1.3", "c": "ssh://git@127.10.0.3/x.git",
		"d": podCIDR, "e": serviceCIDR, "f": "addresses:\n- 127.10.3.4-127.10.3.20\n", "g": "image: ghcr.io/kube-vip/kube-vip:v1.0.3",
	})
	if err := CheckLoopbackOnly(ok); err != nil {
		t.Fatalf("loopback manifest refused: %v", err)
	}
	for _, bad := range []string{
		"https://factory.talos.dev", "url: http://192.0.2.1:8006/x", "gateway: 10.0.0.1", "nameservers: [1.1.1.1]", "127.0.0.0/4", "http://[::1]:80",
	} {
		err := CheckLoopbackOnly(obj(map[string]any{"k": bad}))
		if err == nil || !strings.Contains(err.Error(), "outside 127.0.0.0/8") {
			t.Errorf("%q: want refusal, got %v", bad, err)
		}
	}
}
