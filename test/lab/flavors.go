package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// InstallTalosControlPlaneTemplateCRD installs the optional shim CRD the ClusterClass needs,
// what `kubectl apply -k config/optional/taloscontrolplanetemplate` does (the kustomization
// only lists the CRD file, whose labels are already in it), and waits until it is Established.
func (m *Management) InstallTalosControlPlaneTemplateCRD(ctx context.Context) error {
	return m.installCRDs(ctx, &managerSpec{
		name:    "config/optional/taloscontrolplanetemplate",
		crdDirs: []string{filepath.Join(testenv.RepoRoot(), "config", "optional", "taloscontrolplanetemplate")},
	})
}

// EnsureNamespace creates a namespace unless it exists.
func (m *Management) EnsureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := m.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}

// DryRunApply server-side applies one object with DryRunAll, what `kubectl apply
// --server-side --dry-run=server` sends: defaulting, schema validation and every admission
// webhook run, nothing is stored.
func (m *Management) DryRunApply(ctx context.Context, o *unstructured.Unstructured) error {
	o = o.DeepCopy()
	o.SetManagedFields(nil)
	o.SetResourceVersion("")
	//nolint:staticcheck // client.Apply with unstructured objects, as in apply.
	return m.Client.Patch(ctx, o, client.Apply, client.FieldOwner("proxmox-talos-lab"), client.ForceOwnership, client.DryRunAll)
}

// Apply server-side applies objects in order, each retried until the API server takes it:
// webhooks and freshly started informers (a ClusterClass not yet reconciled, say) can refuse
// the first attempts.
func (m *Management) Apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		err := poll(ctx, time.Second, "apply "+o.GetKind()+" "+o.GetName(), func() (bool, error) {
			if err := m.apply(ctx, o.DeepCopy()); err != nil {
				return false, err
			}
			return true, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// DecodeYAML splits a multi-document manifest into objects.
func DecodeYAML(b []byte) ([]*unstructured.Unstructured, error) { return decodeYAML(b) }
