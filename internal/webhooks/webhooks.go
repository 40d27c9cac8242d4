// Package webhooks holds the defaulting and validating admission webhooks of the provider's
// kinds. Validation returns every problem at once, with field paths and a message that says
// what to do.
package webhooks

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"sigs.k8s.io/cluster-api/util/topology"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// SetupWithManager registers the webhooks of all four kinds.
func SetupWithManager(mgr ctrl.Manager) error {
	for _, setup := range []func(ctrl.Manager) error{
		(&Cluster{}).SetupWebhookWithManager,
		(&ClusterTemplate{}).SetupWebhookWithManager,
		(&Machine{}).SetupWebhookWithManager,
		(&MachineTemplate{}).SetupWebhookWithManager,
	} {
		if err := setup(mgr); err != nil {
			return err
		}
	}
	return nil
}

// toInvalid turns a field error list into the API's Invalid status for one object.
func toInvalid(kind, name string, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(infrav1.GroupVersion.WithKind(kind).GroupKind(), name, errs)
}

// requestFrom returns the admission request carried in the webhook's context.
func requestFrom(ctx context.Context) (admission.Request, error) {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return admission.Request{}, apierrors.NewBadRequest(fmt.Sprintf("expected an admission.Request inside context: %v", err))
	}
	return req, nil
}

// templateSpecUnchanged refuses a change of a template's spec.template.spec: templates are
// immutable so that every machine stamped from one is alike; a change means a new template
// and a rollout. The topology controller's server-side dry-run requests are exempt, as it
// uses them to compare a ClusterClass's desired template with the current one.
func templateSpecUnchanged(ctx context.Context, obj metav1.Object, oldSpec, newSpec any, advice string) (field.ErrorList, error) {
	req, err := requestFrom(ctx)
	if err != nil {
		return nil, err
	}
	if topology.IsDryRunRequest(req, obj) || equality.Semantic.DeepEqual(oldSpec, newSpec) {
		return nil, nil
	}
	return field.ErrorList{field.Forbidden(field.NewPath("spec", "template", "spec"), advice)}, nil
}
