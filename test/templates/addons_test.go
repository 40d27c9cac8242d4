package templates

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// sharedMetalLB is the unmodified upstream metallb-native.yaml the lab keeps beside the
// repository (never copied into it).
const sharedMetalLB = "../../../shared/addons/metallb-native-v0.16.1.yaml"

// renderAddons runs hack/render-addons.sh offline: ADDONS_SOURCE_DIR is always set, so the
// script never downloads.
func renderAddons(t *testing.T, srcDir string, env ...string) (string, []byte, error) {
	t.Helper()
	if _, err := exec.LookPath("kubectl"); err != nil {
		testenv.SkipOrFail(t, "kubectl not found: hack/render-addons.sh writes ConfigMaps with kubectl; install kubectl")
	}
	root := repoRoot(t)
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack", "render-addons.sh"))
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"ADDONS_SOURCE_DIR=" + srcDir,
		"OUT_DIR=" + out,
	}, env...)
	b, err := cmd.CombinedOutput()
	return out, b, err
}

func TestRenderAddonsRefusesWrongChecksum(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "metallb-native.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: tampered}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, out, err := renderAddons(t, src, "CLUSTER_NAME="+clusterName, "ADDONS=metallb")
	if err == nil || !bytes.Contains(out, []byte("checksum mismatch")) {
		t.Fatalf("want a checksum mismatch, got err=%v:\n%s", err, out)
	}
}

func TestRenderAddonsNeedsClusterName(t *testing.T) {
	_, out, err := renderAddons(t, t.TempDir(), "ADDONS=metallb")
	if err == nil || !bytes.Contains(out, []byte("set CLUSTER_NAME")) {
		t.Fatalf("want a CLUSTER_NAME error, got err=%v:\n%s", err, out)
	}
}

func TestRenderAddonsRefusesUnpinned(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "install.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: flux-system}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, out, err := renderAddons(t, src, "CLUSTER_NAME="+clusterName, "ADDONS=flux")
	if err == nil || !bytes.Contains(out, []byte("no pinned checksum")) {
		t.Fatalf("want a refusal of the unpinned Flux manifest, got err=%v:\n%s", err, out)
	}
}

// TestRenderAddonsMetalLB wraps the real upstream MetalLB manifest (checked against the pinned
// SHA-256) into the ConfigMap the templates' ClusterResourceSet names.
func TestRenderAddonsMetalLB(t *testing.T) {
	if _, err := os.Stat(sharedMetalLB); err != nil {
		testenv.SkipOrFail(t, "%s not present (../shared lies beside the repository): %v", sharedMetalLB, err)
	}
	src := t.TempDir()
	raw, err := os.ReadFile(sharedMetalLB)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "metallb-native.yaml"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	dir, out, err := renderAddons(t, src, "CLUSTER_NAME="+clusterName, "NAMESPACE="+targetNamespace, "ADDONS=metallb")
	if err != nil {
		t.Fatalf("render-addons: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, clusterName+"-metallb.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Kind != "ConfigMap" || cm.Metadata.Name != clusterName+"-metallb" || cm.Metadata.Namespace != targetNamespace {
		t.Fatalf("got %s %s/%s", cm.Kind, cm.Metadata.Namespace, cm.Metadata.Name)
	}
	if cm.Data["metallb.yaml"] != string(raw) {
		t.Error("the ConfigMap does not carry the upstream manifest byte for byte")
	}
	if n := len(splitYAML(t, "metallb", raw)); n < 20 || !strings.Contains(cm.Data["metallb.yaml"], "kind: IPAddressPool") {
		t.Errorf("upstream manifest has %d objects", n)
	}
}

// TestCiliumValuesCoverTheLab proves addons/cilium/values.yaml keeps every Talos setting of the
// values the lab's rendered Cilium used (ours may add settings, such as defaultLBServiceIPAM),
// except the one deliberate difference: Hubble certificates by helm, not by the certgen Job
// the shared render (cronJob) contains, which a Reconcile ClusterResourceSet cannot re-apply.
func TestCiliumValuesCoverTheLab(t *testing.T) {
	const shared = "../../../shared/addons/cilium-1.19.6-talos.values.yaml"
	raw, err := os.ReadFile(shared)
	if err != nil {
		testenv.SkipOrFail(t, "%s not present (../shared lies beside the repository): %v", shared, err)
	}
	ours, err := os.ReadFile(filepath.Join(repoRoot(t), "addons", "cilium", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want, got map[string]any
	if err := yaml.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(ours, &got); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, w, g any)
	walk = func(path string, w, g any) {
		if wm, ok := w.(map[string]any); ok {
			gm, _ := g.(map[string]any)
			for k, v := range wm {
				walk(path+"."+k, v, gm[k])
			}
			return
		}
		if path == ".hubble.tls.auto.method" {
			if g != "helm" {
				t.Errorf("addons/cilium/values.yaml%s = %v, want helm (no certgen Job in the render)", path, g)
			}
			return
		}
		if yw, _ := yaml.Marshal(w); !bytes.Equal(yw, must(yaml.Marshal(g))) {
			t.Errorf("addons/cilium/values.yaml%s = %v, the lab's values have %v", path, g, w)
		}
	}
	walk("", want, got)
	if got["defaultLBServiceIPAM"] != "none" {
		t.Error("defaultLBServiceIPAM must be none: MetalLB owns LoadBalancer Services")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
