// Package webhooks holds the defaulting and validating admission webhooks of the provider's
// kinds. Validation returns every problem at once, with field paths and a message that says
// what to do.
package webhooks

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

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
