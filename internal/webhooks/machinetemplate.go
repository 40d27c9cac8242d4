package webhooks

import (
	"context"

	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// MachineTemplate defaults and validates ProxmoxTalosMachineTemplates.
// +kubebuilder:object:generate=false
type MachineTemplate struct{}

// SetupWebhookWithManager registers the webhook.
func (w *MachineTemplate) SetupWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr, &infrav1.ProxmoxTalosMachineTemplate{}).
		WithDefaulter(w).
		WithValidator(w).
		Complete()
}

// +kubebuilder:webhook:verbs=create;update,path=/mutate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtalosmachinetemplate,mutating=true,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachinetemplates,versions=v1beta1,name=default.proxmoxtalosmachinetemplate.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1
// +kubebuilder:webhook:verbs=create;update,path=/validate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtalosmachinetemplate,mutating=false,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachinetemplates,versions=v1beta1,name=validation.proxmoxtalosmachinetemplate.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1

var (
	_ admission.Defaulter[*infrav1.ProxmoxTalosMachineTemplate] = &MachineTemplate{}
	_ admission.Validator[*infrav1.ProxmoxTalosMachineTemplate] = &MachineTemplate{}
)

// Default fills unset fields of the template's machine spec.
func (w *MachineTemplate) Default(_ context.Context, t *infrav1.ProxmoxTalosMachineTemplate) error {
	t.Spec.Template.Spec.Default()
	return nil
}

// ValidateCreate validates a new template.
func (w *MachineTemplate) ValidateCreate(_ context.Context, t *infrav1.ProxmoxTalosMachineTemplate) (admission.Warnings, error) {
	return nil, toInvalid("ProxmoxTalosMachineTemplate", t.Name, validateMachineTemplate(t))
}

// ValidateUpdate refuses spec changes (create a new template instead, which rolls out new
// machines), except for the topology controller's server-side dry-run requests, which it
// uses to compare a ClusterClass's desired template with the current one.
func (w *MachineTemplate) ValidateUpdate(ctx context.Context, oldT, newT *infrav1.ProxmoxTalosMachineTemplate) (admission.Warnings, error) {
	immutable, err := templateSpecUnchanged(ctx, newT, oldT.Spec.Template.Spec, newT.Spec.Template.Spec,
		"ProxmoxTalosMachineTemplate spec.template.spec is immutable: create a new template and reference it from the MachineDeployment or control plane")
	if err != nil {
		return nil, err
	}
	errs := append(validateMachineTemplate(newT), immutable...)
	return nil, toInvalid("ProxmoxTalosMachineTemplate", newT.Name, errs)
}

// ValidateDelete allows every deletion.
func (w *MachineTemplate) ValidateDelete(context.Context, *infrav1.ProxmoxTalosMachineTemplate) (admission.Warnings, error) {
	return nil, nil
}

func validateMachineTemplate(t *infrav1.ProxmoxTalosMachineTemplate) field.ErrorList {
	errs := t.Spec.Template.ObjectMeta.Validate(field.NewPath("spec", "template", "metadata"))
	// A template does not know whether it serves a control plane; the control-plane memory
	// minimum is enforced on the machines it produces.
	return append(errs, ValidateMachineSpec(&t.Spec.Template.Spec, false, field.NewPath("spec", "template", "spec"))...)
}
