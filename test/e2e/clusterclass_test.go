//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"sort"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab"
)

// The ClusterClass cluster of the lab: another name and namespace than the default flavor's,
// the same VIP (the default cluster is gone by then), and pools wider than the replicas. The
// class rolls out with maxSurge 0, which needs no spare address (docs/templates.md, Rollouts);
// the wider pools only keep the version-bump spec independent of when a deleted VM's address
// returns to the pool.
const (
	topologyName      = "topo"
	topologyNamespace = "lab-topology"
	topologyFrom      = "v1.35.0"
	topologyTo        = "v1.35.1"
)

var topologyOverrides = map[string]string{
	"CONTROL_PLANE_IP_RANGE": "127.10.1.1-127.10.1.9",
	"WORKER_IP_RANGE":        "127.10.2.1-127.10.2.9",
}

// createTopologyCluster generates the topology flavor with clusterctl, applies the class and
// the Cluster and waits until the Cluster is Available. It points the lab at the new cluster
// (Status and WaitAvailable read l.ClusterName in l.Namespace).
func createTopologyCluster(ctx context.Context, l *lab.Lab) {
	GinkgoHelper()
	l.ClusterName, l.Namespace, l.KubernetesVersion = topologyName, topologyNamespace, topologyFrom
	Expect(l.EnsureCredentials(ctx)).To(Succeed())
	// The add-on ConfigMaps `make addons` would produce (stand-ins): the flavor's
	// ClusterResourceSets select the topology Cluster by its labels and apply them.
	for _, cm := range addonConfigMaps(topologyName, topologyNamespace) {
		Expect(l.Mgmt.Client.Create(ctx, cm)).To(Succeed(), "ConfigMap %s", cm.Name)
	}
	objs := generateFlavor(ctx, l, "topology", topologyName, topologyNamespace, topologyOverrides)
	applyCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// Apply retries: the Cluster webhook refuses the Cluster until the ClusterClass reconciled.
	Expect(l.Mgmt.Apply(applyCtx, objs)).To(Succeed())
	waitAvailable(ctx, l, 8*time.Minute)
}

func waitAvailable(ctx context.Context, l *lab.Lab, timeout time.Duration) lab.Status {
	GinkgoHelper()
	start := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := l.WaitAvailable(waitCtx, func(line string) { GinkgoWriter.Println(line) })
	GinkgoWriter.Println(l.Summary(st))
	Expect(err).NotTo(HaveOccurred())
	GinkgoWriter.Printf("cluster %s Available after %s\n", l.ClusterName, time.Since(start).Round(time.Second))
	// Available needs only as many workers as the MachineDeployment's maxUnavailable
	// allows (1 of 2 in the flavors): the specs that follow expect every machine Ready.
	Eventually(func(g Gomega) {
		var err error
		st, err = l.Status(waitCtx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(st.CPReady).To(Equal(l.ControlPlanes), st.Describe())
		g.Expect(st.WReady).To(Equal(l.Workers), st.Describe())
	}).WithContext(waitCtx).WithPolling(time.Second).Should(Succeed())
	GinkgoWriter.Printf("cluster %s: every machine Ready after %s\n", l.ClusterName, time.Since(start).Round(time.Second))
	return st
}

// checkRenderedLoopback checks what topology rendered from the class (the ProxmoxTalosCluster
// with the patched Proxmox URL and pools, the TalosControlPlane with the VIP patch): the class
// file itself holds placeholders, so this is where its addresses are checked.
func checkRenderedLoopback(ctx context.Context, l *lab.Lab) {
	GinkgoHelper()
	var objs []*unstructured.Unstructured
	for _, gvk := range [][2]string{
		{"infrastructure.cluster.x-k8s.io/v1beta1", "ProxmoxTalosClusterList"},
		{"controlplane.cluster.x-k8s.io/v1alpha3", "TalosControlPlaneList"},
	} {
		list := &unstructured.UnstructuredList{}
		list.SetAPIVersion(gvk[0])
		list.SetKind(gvk[1])
		Expect(l.Mgmt.Client.List(ctx, list, client.InNamespace(l.Namespace))).To(Succeed())
		Expect(list.Items).To(HaveLen(1), gvk[1])
		for i := range list.Items {
			objs = append(objs, &list.Items[i])
		}
	}
	Expect(lab.CheckLoopbackOnly(objs)).To(Succeed())
}

// machineVersions maps every Machine of the lab's cluster to its spec.version.
func machineVersions(ctx context.Context, g Gomega, l *lab.Lab) map[string]string {
	machines := &clusterv1.MachineList{}
	g.Expect(l.Mgmt.Client.List(ctx, machines, client.InNamespace(l.Namespace),
		client.MatchingLabels{clusterv1.ClusterNameLabel: l.ClusterName})).To(Succeed())
	out := map[string]string{}
	for _, m := range machines.Items {
		out[m.Name] = m.Spec.Version
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// bumpTopologyVersion sets spec.topology.version and waits until every Machine was replaced
// by one of the new version and the Cluster is Available again.
func bumpTopologyVersion(ctx context.Context, l *lab.Lab, to string, timeout time.Duration) {
	GinkgoHelper()
	start := time.Now()
	var before map[string]string
	Eventually(func(g Gomega) { before = machineVersions(ctx, g, l) }).Should(Succeed())
	Expect(before).To(HaveLen(l.ControlPlanes + l.Workers))

	cl := &clusterv1.Cluster{}
	Expect(l.Mgmt.Client.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: l.ClusterName}, cl)).To(Succeed())
	patch := client.MergeFrom(cl.DeepCopy())
	cl.Spec.Topology.Version = to
	Expect(l.Mgmt.Client.Patch(ctx, cl, patch)).To(Succeed())
	GinkgoWriter.Printf("spec.topology.version %s -> %s; machines before: %v\n", topologyFrom, to, sortedKeys(before))

	last := ""
	Eventually(func(g Gomega) {
		now := machineVersions(ctx, g, l)
		if line := fmt.Sprint(now); line != last {
			GinkgoWriter.Printf("%s machines: %s\n", time.Since(start).Round(time.Second), line)
			last = line
		}
		for name := range before {
			g.Expect(now).NotTo(HaveKey(name), "old Machine still present")
		}
		g.Expect(now).To(HaveLen(l.ControlPlanes + l.Workers))
		for name, v := range now {
			g.Expect(v).To(Equal(to), "Machine %s", name)
		}
	}, timeout, "3s").Should(Succeed())
	st := waitAvailable(ctx, l, 3*time.Minute)
	Expect(st.CPReady).To(Equal(l.ControlPlanes))
	Expect(st.WReady).To(Equal(l.Workers))
	GinkgoWriter.Printf("version bump to %s done in %s\n", to, time.Since(start).Round(time.Second))
}
