package autoscaler

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// TestAutoscalerScalesFromZeroWithOurTemplate runs the cluster autoscaler's own Cluster API
// provider code (cached by hack/autoscaler-contract.sh, which `make test` runs first) on
// testdata/workers.json: a MachineDeployment at zero replicas with
// the flavor's annotations is a node group the autoscaler can scale from zero, its template
// node has exactly the published capacity as allocatable, and IncreaseSize(1) scales it
// through the scale subresource. Without the cached binary it skips, except under CI.
func TestAutoscalerScalesFromZeroWithOurTemplate(t *testing.T) {
	g := NewWithT(t)
	root := testenv.RepoRoot()
	out, err := exec.Command("bash", filepath.Join(root, "hack", "autoscaler-contract.sh"), "--dir").Output()
	g.Expect(err).NotTo(HaveOccurred(), "hack/autoscaler-contract.sh --dir")
	bin := filepath.Join(strings.TrimSpace(string(out)), "clusterapi-contract.test")
	if _, err := os.Stat(bin); err != nil {
		testenv.SkipOrFail(t, "the autoscaler contract test is not built (%v): run hack/autoscaler-contract.sh (or make autoscaler-contract)", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run", "^TestProxmoxTalosScaleFromZero$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"PROXMOXTALOS_CONTRACT_FIXTURE="+filepath.Join(root, "test", "autoscaler", "testdata", "workers.json"))
	cmd.Dir = t.TempDir()
	res, err := cmd.CombinedOutput()
	t.Logf("autoscaler clusterapi provider:\n%s", res)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(res)).To(ContainSubstring("--- PASS: TestProxmoxTalosScaleFromZero"), "the contract test ran")
}
