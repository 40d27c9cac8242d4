package webhooks

import (
	"context"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// Machine defaults and validates ProxmoxTalosMachines.
// +kubebuilder:object:generate=false
type Machine struct{}

// SetupWebhookWithManager registers the webhook.
func (w *Machine) SetupWebhookWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr, &infrav1.ProxmoxTalosMachine{}).
		WithDefaulter(w).
		WithValidator(w).
		Complete()
}

// +kubebuilder:webhook:verbs=create;update,path=/mutate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtalosmachine,mutating=true,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachines,versions=v1beta1,name=default.proxmoxtalosmachine.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1
// +kubebuilder:webhook:verbs=create;update,path=/validate-infrastructure-cluster-x-k8s-io-v1beta1-proxmoxtalosmachine,mutating=false,failurePolicy=fail,matchPolicy=Equivalent,groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachines,versions=v1beta1,name=validation.proxmoxtalosmachine.infrastructure.cluster.x-k8s.io,sideEffects=None,admissionReviewVersions=v1

var (
	_ admission.Defaulter[*infrav1.ProxmoxTalosMachine] = &Machine{}
	_ admission.Validator[*infrav1.ProxmoxTalosMachine] = &Machine{}
)

// Default fills unset fields.
func (w *Machine) Default(_ context.Context, m *infrav1.ProxmoxTalosMachine) error {
	m.Spec.Default()
	return nil
}

// ValidateCreate validates a new machine.
func (w *Machine) ValidateCreate(_ context.Context, m *infrav1.ProxmoxTalosMachine) (admission.Warnings, error) {
	return nil, toInvalid("ProxmoxTalosMachine", m.Name, ValidateMachineSpec(&m.Spec, isControlPlane(m), field.NewPath("spec")))
}

// ValidateUpdate validates a changed machine: the VM is built once, so the spec is
// immutable except for the identity the controller records (which CRD rules make
// write-once).
func (w *Machine) ValidateUpdate(_ context.Context, oldM, newM *infrav1.ProxmoxTalosMachine) (admission.Warnings, error) {
	errs := ValidateMachineSpec(&newM.Spec, isControlPlane(newM), field.NewPath("spec"))
	if !equality.Semantic.DeepEqual(immutableMachineSpec(oldM.Spec), immutableMachineSpec(newM.Spec)) {
		errs = append(errs, field.Forbidden(field.NewPath("spec"),
			"ProxmoxTalosMachine spec is immutable once created (its VM is built from it); change the machine template instead, which rolls out new machines"))
	}
	return nil, toInvalid("ProxmoxTalosMachine", newM.Name, errs)
}

// ValidateDelete allows every deletion.
func (w *Machine) ValidateDelete(context.Context, *infrav1.ProxmoxTalosMachine) (admission.Warnings, error) {
	return nil, nil
}

// isControlPlane tells control-plane machines apart by the label Cluster API's control
// plane providers put on the infrastructure machines they create.
func isControlPlane(m *infrav1.ProxmoxTalosMachine) bool {
	_, ok := m.Labels[clusterv1.MachineControlPlaneLabel]
	return ok
}
