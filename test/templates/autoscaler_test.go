package templates

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	capiwebhooks "sigs.k8s.io/cluster-api/core/webhooks/admission"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

var (
	// the commented annotations under the workers MachineDeployment's metadata
	autoscalerAnnotation = regexp.MustCompile(`(?m)^\s*#\s+(cluster\.x-k8s\.io/cluster-api-autoscaler-node-group-m(?:in|ax)-size): "(\d+)"\s*$`)
	workerRangeDefault   = regexp.MustCompile(`\$\{WORKER_IP_RANGE:=([0-9.]+)-([0-9.]+)\}`)
)

// TestWorkersDocumentAutoscalerAnnotations: the flavors document (commented out, so off by
// default) the cluster autoscaler's node-group annotations on the workers MachineDeployment
// with CAPI's own annotation names, a minimum of 0 (scale from zero) and a maximum the
// default workers address pool can hold; CAPI's own MachineDeployment defaulting webhook
// turns them into replicas = minimum when a user applies them without replicas.
func TestWorkersDocumentAutoscalerAnnotations(t *testing.T) {
	root := testenv.RepoRoot()
	for _, flavor := range []string{"cluster-template.yaml", "cluster-template-metal.yaml", "cluster-template-talos-vip.yaml"} {
		t.Run(flavor, func(t *testing.T) {
			g := NewWithT(t)
			data, err := os.ReadFile(filepath.Join(root, "templates", flavor))
			g.Expect(err).NotTo(HaveOccurred())

			annotations := map[string]string{}
			for _, m := range autoscalerAnnotation.FindAllStringSubmatch(string(data), -1) {
				annotations[m[1]] = m[2]
			}
			g.Expect(annotations).To(HaveLen(2), "both autoscaler annotations documented once")
			g.Expect(annotations).To(HaveKey(clusterv1.AutoscalerMinSizeAnnotation))
			g.Expect(annotations).To(HaveKey(clusterv1.AutoscalerMaxSizeAnnotation))
			minSize, err := strconv.Atoi(annotations[clusterv1.AutoscalerMinSizeAnnotation])
			g.Expect(err).NotTo(HaveOccurred())
			maxSize, err := strconv.Atoi(annotations[clusterv1.AutoscalerMaxSizeAnnotation])
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(minSize).To(Equal(0), "the example shows scale from zero")
			g.Expect(maxSize).To(BeNumerically(">", minSize))

			r := workerRangeDefault.FindStringSubmatch(string(data))
			g.Expect(r).NotTo(BeNil(), "WORKER_IP_RANGE default")
			first, last := netip.MustParseAddr(r[1]).As4(), netip.MustParseAddr(r[2]).As4()
			poolSize := int(last[3]) - int(first[3]) + 1
			g.Expect(maxSize).To(BeNumerically("<=", poolSize), "the example's maximum fits the default workers pool (%d addresses)", poolSize)

			// CAPI's MachineDeployment defaulting webhook, as on `kubectl apply` of the
			// workers MachineDeployment with the annotations and without replicas.
			md := &clusterv1.MachineDeployment{
				ObjectMeta: metav1.ObjectMeta{Name: "c-workers", Namespace: "ns", Annotations: annotations},
				Spec:       clusterv1.MachineDeploymentSpec{ClusterName: "c"},
			}
			ctx := admission.NewContextWithRequest(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{Operation: admissionv1.Create}})
			g.Expect((&capiwebhooks.MachineDeployment{}).Default(ctx, md)).To(Succeed())
			g.Expect(md.Spec.Replicas).NotTo(BeNil())
			g.Expect(int(*md.Spec.Replicas)).To(Equal(minSize), "CAPI starts an autoscaled MachineDeployment at its minimum")
			g.Expect(strings.Contains(string(data), "docs/autoscaling.md")).To(BeTrue(), "the comment points at the docs")
		})
	}
}
