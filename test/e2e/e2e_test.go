//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/test/framework"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "proxmox-talos e2e over the lab")
}

// ContinueOnFailure: the deletion spec runs even when the cluster never turned Available, so
// every run checks that Proxmox is left empty.
var _ = Describe("The default flavor on the lab", Ordered, ContinueOnFailure, func() {
	var (
		l         *lab.Lab
		proxy     framework.ClusterProxy
		cluster   *clusterv1.Cluster
		artifacts string
		ctx       = context.Background()
	)

	BeforeAll(func() {
		artifacts = os.Getenv("ARTIFACTS")
		if artifacts == "" {
			artifacts = filepath.Join(testenv.RepoRoot(), "_artifacts", "e2e-"+time.Now().Format("20060102-150405"))
		}
		GinkgoWriter.Printf("artifacts: %s\n", artifacts)
		startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		var err error
		l, err = lab.Start(startCtx, lab.Options{
			ArtifactsDir: artifacts, NodeSim: lab.TalosNodeSim,
			Logf: func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
		})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() {
			l.Stop()
			// Every process the lab started must be gone once it stops.
			Expect(l.Leftovers()).To(BeEmpty(), "lab processes or listeners still running after Stop")
			fmt.Fprintf(GinkgoWriter, "artifacts: %s\n", artifacts)
			AddReportEntry("artifacts", artifacts)
		})
		proxy = framework.NewClusterProxy("lab", l.Mgmt.Kubeconfig, lab.Scheme())
		DeferCleanup(func() { proxy.Dispose(ctx) })
	})

	It("provisions the infrastructure, all five Machines get Nodes and the Cluster turns Available", func() {
		cluster = framework.DiscoveryAndWaitForCluster(ctx, framework.DiscoveryAndWaitForClusterInput{
			Getter: proxy.GetClient(), Namespace: l.Namespace, Name: l.ClusterName,
		}, "3m", "2s")
		Eventually(func(g Gomega) {
			machines := framework.GetMachinesByCluster(ctx, framework.GetMachinesByClusterInput{
				Lister: proxy.GetClient(), ClusterName: l.ClusterName, Namespace: l.Namespace,
			})
			g.Expect(machines).To(HaveLen(l.ControlPlanes + l.Workers))
		}, "3m", "2s").Should(Succeed())
		framework.WaitForClusterMachineNodeRefs(ctx, framework.WaitForClusterMachineNodeRefsInput{
			GetLister: proxy.GetClient(), Cluster: cluster,
		}, "8m", "5s")

		timeout := 8 * time.Minute
		if v := os.Getenv("E2E_AVAILABLE_TIMEOUT"); v != "" {
			d, err := time.ParseDuration(v)
			Expect(err).NotTo(HaveOccurred(), "E2E_AVAILABLE_TIMEOUT")
			timeout = d
		}
		waitCtx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		st, err := l.WaitAvailable(waitCtx, func(line string) { GinkgoWriter.Println(line) })
		GinkgoWriter.Println(l.Summary(st))
		Expect(err).NotTo(HaveOccurred())
		Expect(st.CPReady).To(Equal(l.ControlPlanes))
		Expect(st.WReady).To(Equal(l.Workers))
		Expect(l.PVE.Inventory().VMs).To(HaveLen(l.ControlPlanes + l.Workers))
	})

	It("deletes the Cluster and leaves Proxmox empty", func() {
		if cluster == nil {
			cluster = &clusterv1.Cluster{}
			cluster.Namespace, cluster.Name = l.Namespace, l.ClusterName
		}
		framework.DeleteCluster(ctx, framework.DeleteClusterInput{Deleter: proxy.GetClient(), Cluster: cluster})
		framework.WaitForClusterDeleted(ctx, framework.WaitForClusterDeletedInput{
			ClusterProxy: proxy, Cluster: cluster, ArtifactFolder: artifacts,
			ClusterctlConfigPath: filepath.Join(artifacts, "clusterctl.yaml"),
		}, "5m", "2s")
		Eventually(func(g Gomega) {
			inv := l.PVE.Inventory()
			g.Expect(inv.VMs).To(BeEmpty(), "VMs left in pvesim")
			// Nothing of the cluster's may remain: no VM disk, no boot ISO. The nocloud Talos
			// image is the one exception by design (internal/machine/delete.go): it is shared
			// by every cluster with the same schematic and version, so it stays for the next.
			for _, v := range inv.Volumes {
				g.Expect(v.Content).To(Equal("import"), "volume %s left in pvesim", v.VolID)
				g.Expect(v.VolID).To(MatchRegexp(`^local:import/talos-v[0-9.]+-nocloud-amd64-[0-9a-f]{64}\.qcow2$`),
					"volume %s left in pvesim", v.VolID)
			}
		}, "1m", "2s").Should(Succeed())
	})
})
