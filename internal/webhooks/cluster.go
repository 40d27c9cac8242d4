package webhooks

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// Cluster defaults and validates ProxmoxTalosClusters.
// +kubebuilder:object:generate=false
type Cluster struct {
	// Reader lists the other ProxmoxTalosClusters whose addresses a cluster must not
	// share. Defaults to the manager's uncached reader, so a cluster created a moment ago
	// is seen.
	Reader client.Reader
}

// SetupWebhookWithManager registers the webhook.
func (w *Cluster) SetupWebhookWithManager(mgr ctrl.Manager) error {
	if w.Reader == nil {
		w.Reader = mgr.GetAPIReader()
	}
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
func (w *Cluster) ValidateCreate(ctx context.Context, c *infrav1.ProxmoxTalosCluster) (admission.Warnings, error) {
	errs := ValidateClusterSpec(&c.Spec, field.NewPath("spec"))
	others, err := w.againstOthers(ctx, c)
	if err != nil {
		return nil, err
	}
	return clusterWarnings(&c.Spec), toInvalid("ProxmoxTalosCluster", c.Name, append(errs, others...))
}

// ValidateUpdate validates a changed cluster. Most fields stay mutable because a
// ClusterClass patches the cluster in place; the endpoint host is write-once (CRD rule).
// Addresses are compared with other clusters only when the update changes them.
func (w *Cluster) ValidateUpdate(ctx context.Context, old, c *infrav1.ProxmoxTalosCluster) (admission.Warnings, error) {
	errs := ValidateClusterSpec(&c.Spec, field.NewPath("spec"))
	if addressesChanged(old, c) {
		others, err := w.againstOthers(ctx, c)
		if err != nil {
			return nil, err
		}
		errs = append(errs, others...)
	}
	return clusterWarnings(&c.Spec), toInvalid("ProxmoxTalosCluster", c.Name, errs)
}

// againstOthers lists every ProxmoxTalosCluster (all namespaces: a network is not
// bounded by a namespace) and compares addresses with them.
func (w *Cluster) againstOthers(ctx context.Context, c *infrav1.ProxmoxTalosCluster) (field.ErrorList, error) {
	if w.Reader == nil {
		return nil, nil
	}
	var list infrav1.ProxmoxTalosClusterList
	if err := w.Reader.List(ctx, &list); err != nil {
		return nil, apierrors.NewInternalError(fmt.Errorf("listing ProxmoxTalosClusters to check for shared addresses: %w", err))
	}
	return ValidateAgainstOtherClusters(c, list.Items, field.NewPath("spec")), nil
}

// ValidateDelete allows every deletion.
func (w *Cluster) ValidateDelete(context.Context, *infrav1.ProxmoxTalosCluster) (admission.Warnings, error) {
	return nil, nil
}

func clusterWarnings(spec *infrav1.ProxmoxTalosClusterSpec) admission.Warnings {
	var w admission.Warnings
	if spec.Proxmox.InsecureAllowHTTP && strings.HasPrefix(spec.Proxmox.URL, "http://") {
		w = append(w, "spec.proxmox.insecureAllowHTTP is set and url is http: the API token travels unencrypted")
	}
	if spec.Talos.InsecureAllowHTTP && strings.HasPrefix(spec.Talos.FactoryURL, "http://") {
		w = append(w, "spec.talos.insecureAllowHTTP is set and factoryURL is http: images are fetched without TLS")
	}
	if spec.Proxmox.InsecureSkipTLSVerify {
		w = append(w, "spec.proxmox.insecureSkipTLSVerify is set: the Proxmox API's certificate is not verified; prefer caBundle in the credentials Secret")
	}
	if spec.Talos.Platform == infrav1.TalosPlatformMetal {
		w = append(w, "spec.talos.platform is metal: every node's static addresses are sent to the Image Factory in its schematic, and each node downloads its own image")
	}
	return w
}
