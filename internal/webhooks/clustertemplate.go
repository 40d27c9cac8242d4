package webhooks

import (
	"context"

	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// ClusterTemplate defaults and validates ProxmoxTalosClusterTemplates.
// +kubebuilder:object:generate=false
type ClusterTemplate struct{}

// SetupWebhookWithManager registers the webhook.
func (w *ClusterTemplate) SetupWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr, &infrav1.ProxmoxTalosClusterTemplate{}).
		WithDefaulter(w).
		WithValidator(w).
		Complete()
}

// +kubebuilder:webhook:verbs=create;update,path=/mutate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtalosclustertemplate,mutating=true,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclustertemplates,versions=v1beta1,name=default.proxmoxtalosclustertemplate.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1
// +kubebuilder:webhook:verbs=create;update,path=/validate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtalosclustertemplate,mutating=false,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclustertemplates,versions=v1beta1,name=validation.proxmoxtalosclustertemplate.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1

var (
	_ admission.Defaulter[*infrav1.ProxmoxTalosClusterTemplate] = &ClusterTemplate{}
	_ admission.Validator[*infrav1.ProxmoxTalosClusterTemplate] = &ClusterTemplate{}
)

// Default fills unset fields of the template's cluster spec.
func (w *ClusterTemplate) Default(_ context.Context, t *infrav1.ProxmoxTalosClusterTemplate) error {
	t.Spec.Template.Spec.Default()
	return nil
}

// ValidateCreate validates a new template.
func (w *ClusterTemplate) ValidateCreate(_ context.Context, t *infrav1.ProxmoxTalosClusterTemplate) (admission.Warnings, error) {
	return nil, toInvalid("ProxmoxTalosClusterTemplate", t.Name, validateClusterTemplate(t))
}

// ValidateUpdate refuses spec changes (create a new template instead), except for the
// topology controller's server-side dry-run requests.
func (w *ClusterTemplate) ValidateUpdate(ctx context.Context, oldT, newT *infrav1.ProxmoxTalosClusterTemplate) (admission.Warnings, error) {
	immutable, err := templateSpecUnchanged(ctx, newT, oldT.Spec.Template.Spec, newT.Spec.Template.Spec,
		"ProxmoxTalosClusterTemplate spec.template.spec is immutable: create a new template and point the ClusterClass at it")
	if err != nil {
		return nil, err
	}
	errs := append(validateClusterTemplate(newT), immutable...)
	return nil, toInvalid("ProxmoxTalosClusterTemplate", newT.Name, errs)
}

// ValidateDelete allows every deletion.
func (w *ClusterTemplate) ValidateDelete(context.Context, *infrav1.ProxmoxTalosClusterTemplate) (admission.Warnings, error) {
	return nil, nil
}

func validateClusterTemplate(t *infrav1.ProxmoxTalosClusterTemplate) field.ErrorList {
	errs := t.Spec.Template.ObjectMeta.Validate(field.NewPath("spec", "template", "metadata"))
	spec := t.Spec.Template.Spec
	// A ClusterClass usually leaves the endpoint to a per-cluster variable patch, so an
	// empty endpoint is fine in a template; everything else must hold.
	if spec.ControlPlaneEndpoint.Host == "" && spec.ControlPlaneEndpointPool == "" {
		spec.ControlPlaneEndpoint.Host = "0.0.0.0"
	}
	return append(errs, ValidateClusterSpec(&spec, field.NewPath("spec", "template", "spec"))...)
}
