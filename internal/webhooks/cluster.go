package webhooks

import (
	"context"

	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// Cluster defaults and validates ProxmoxTalosClusters.
// +kubebuilder:object:generate=false
type Cluster struct{}

// SetupWebhookWithManager registers the webhook.
func (w *Cluster) SetupWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr, &infrav1.ProxmoxTalosCluster{}).
		WithDefaulter(w).
		WithValidator(w).
		Complete()
}

// +kubebuilder:webhook:verbs=create;update,path=/mutate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtaloscluster,mutating=true,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclusters,versions=v1beta1,name=default.proxmoxtaloscluster.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1
// +kubebuilder:webhook:verbs=create;update,path=/validate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtaloscluster,mutating=false,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclusters,versions=v1beta1,name=validation.proxmoxtaloscluster.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1

var (
	_ admission.Defaulter[*infrav1.ProxmoxTalosCluster] = &Cluster{}
	_ admission.Validator[*infrav1.ProxmoxTalosCluster] = &Cluster{}
)

// Default fills unset fields.
func (w *Cluster) Default(_ context.Context, c *infrav1.ProxmoxTalosCluster) error {
	c.Spec.Default()
	return nil
}

// ValidateCreate validates a new cluster.
func (w *Cluster) ValidateCreate(_ context.Context, c *infrav1.ProxmoxTalosCluster) (admission.Warnings, error) {
	return clusterWarnings(&c.Spec), toInvalid("ProxmoxTalosCluster", c.Name, ValidateClusterSpec(&c.Spec, field.NewPath("spec")))
}

// ValidateUpdate validates a changed cluster. Most fields stay mutable because a
// ClusterClass patches the cluster in place; the endpoint host is write-once (CRD rule).
func (w *Cluster) ValidateUpdate(_ context.Context, _, c *infrav1.ProxmoxTalosCluster) (admission.Warnings, error) {
	return clusterWarnings(&c.Spec), toInvalid("ProxmoxTalosCluster", c.Name, ValidateClusterSpec(&c.Spec, field.NewPath("spec")))
}

// ValidateDelete allows every deletion.
func (w *Cluster) ValidateDelete(context.Context, *infrav1.ProxmoxTalosCluster) (admission.Warnings, error) {
	return nil, nil
}

func clusterWarnings(spec *infrav1.ProxmoxTalosClusterSpec) admission.Warnings {
	var w admission.Warnings
	if spec.Proxmox.InsecureSkipTLSVerify {
		w = append(w, "spec.proxmox.insecureSkipTLSVerify is set: the Proxmox API's certificate is not verified; prefer caBundle in the credentials Secret")
	}
	if spec.Talos.Platform == infrav1.TalosPlatformMetal {
		w = append(w, "spec.talos.platform is metal: every node's static addresses are sent to the Image Factory in its schematic, and each node downloads its own image")
	}
	return w
}
