package controllers

import (
	"context"
	"errors"
	"fmt"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util"
	"sigs.k8s.io/cluster-api/util/patch"
	"sigs.k8s.io/cluster-api/util/predicates"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machinetemplate"
)

// ProxmoxTalosMachineTemplateReconciler publishes status.capacity and status.nodeInfo on
// ProxmoxTalosMachineTemplates (Cluster API's opt-in autoscaling from zero), so the cluster
// autoscaler can scale a MachineDeployment up from zero replicas.
//
// It does not honour Cluster.spec.paused: it calls nothing outside the management cluster
// and writes only the template's own status, computed from its spec, and `clusterctl move`
// does not carry status, so the target cluster's provider must publish it again at once.
type ProxmoxTalosMachineTemplateReconciler struct {
	Client client.Client
	// WatchFilterValue is the value of the cluster.x-k8s.io/watch-filter label this
	// controller handles (empty: all).
	WatchFilterValue string
}

// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachinetemplates,verbs=get;list;watch
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachinetemplates/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups=cluster.x-k8s.io,resources=clusters,verbs=get;list;watch

// SetupWithManager registers the controller. Templates are reconciled when they change
// (creation, the Cluster owner reference Cluster API adds, an in-place spec edit) and when
// their cluster's ProxmoxTalosCluster changes (its Talos architecture is the default of
// every template's nodeInfo.architecture).
func (r *ProxmoxTalosMachineTemplateReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, options controller.Options) error {
	if r.Client == nil {
		return errors.New("ProxmoxTalosMachineTemplateReconciler needs Client")
	}
	log := ctrl.LoggerFrom(ctx).WithValues("controller", "proxmoxtalosmachinetemplate")
	return ctrl.NewControllerManagedBy(mgr).
		For(&infrav1.ProxmoxTalosMachineTemplate{}).
		WithOptions(options).
		WithEventFilter(predicates.ResourceHasFilterLabel(mgr.GetScheme(), log, r.WatchFilterValue)).
		// A Cluster created after its templates (or pointed at another infrastructure object)
		// changes their answer; its status updates do not.
		Watches(&clusterv1.Cluster{}, handler.EnqueueRequestsFromMapFunc(r.clusterToTemplates),
			builder.WithPredicates(predicate.GenerationChangedPredicate{}),
		).
		// Of a ProxmoxTalosCluster, only what can change a template's answer: its Talos
		// settings (generation) and its link to the Cluster (owner reference and label,
		// which Cluster API adds after creation); status patches are ignored.
		Watches(&infrav1.ProxmoxTalosCluster{}, handler.EnqueueRequestsFromMapFunc(r.clusterToTemplates),
			builder.WithPredicates(predicate.Funcs{
				UpdateFunc: func(e event.UpdateEvent) bool {
					return e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() ||
						clusterNameOf(e.ObjectOld) != clusterNameOf(e.ObjectNew)
				},
			}),
		).
		Complete(r)
}

// clusterToTemplates maps a Cluster or ProxmoxTalosCluster to the templates of the Cluster: those
// owned by the Cluster (Cluster API adds that reference to every template a
// MachineDeployment uses, and to topology's clones) or labelled with its name.
func (r *ProxmoxTalosMachineTemplateReconciler) clusterToTemplates(ctx context.Context, o client.Object) []ctrl.Request {
	name := clusterNameOf(o)
	if _, isCluster := o.(*clusterv1.Cluster); isCluster {
		name = o.GetName()
	}
	if name == "" {
		return nil
	}
	var list infrav1.ProxmoxTalosMachineTemplateList
	if err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing ProxmoxTalosMachineTemplates to follow a ProxmoxTalosCluster change")
		return nil
	}
	var out []ctrl.Request
	for i := range list.Items {
		t := &list.Items[i]
		if clusterNameOf(t) == name {
			out = append(out, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(t)})
		}
	}
	return out
}

// clusterNameOf is the name of the Cluster an object belongs to: its Cluster owner
// reference, else its cluster-name label; empty for a shared template (a ClusterClass's).
func clusterNameOf(o metav1.Object) string {
	for _, ref := range o.GetOwnerReferences() {
		if ref.Kind != "Cluster" {
			continue
		}
		if gv, err := schema.ParseGroupVersion(ref.APIVersion); err == nil && gv.Group == clusterv1.GroupVersion.Group {
			return ref.Name
		}
	}
	return o.GetLabels()[clusterv1.ClusterNameLabel]
}

// Reconcile publishes the template's capacity and node info.
func (r *ProxmoxTalosMachineTemplateReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, rerr error) {
	tmpl := &infrav1.ProxmoxTalosMachineTemplate{}
	if err := r.Client.Get(ctx, req.NamespacedName, tmpl); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !tmpl.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	clusterTalos, err := r.clusterTalos(ctx, tmpl)
	if err != nil {
		return ctrl.Result{}, err
	}
	want := machinetemplate.Status(tmpl.Spec.Template.Spec, clusterTalos)
	if apiequality.Semantic.DeepEqual(tmpl.Status, want) {
		return ctrl.Result{}, nil
	}

	helper, err := patch.NewHelper(tmpl, r.Client)
	if err != nil {
		return ctrl.Result{}, err
	}
	defer func() {
		if err := helper.Patch(ctx, tmpl); err != nil && !apierrors.IsNotFound(err) {
			rerr = kerrors.NewAggregate([]error{rerr, fmt.Errorf("patching ProxmoxTalosMachineTemplate %s status: %w", req.NamespacedName, err)})
		}
	}()
	tmpl.Status = want
	ctrl.LoggerFrom(ctx).V(4).Info("Publishing capacity for autoscaling from zero",
		"capacity", want.Capacity, "architecture", want.NodeInfo.Architecture)
	return ctrl.Result{}, nil
}

// clusterTalos returns the Talos settings of the template's cluster, nil when the template
// has no cluster (yet) or the cluster has no ProxmoxTalosCluster (yet): the watches bring
// the template back when either appears.
func (r *ProxmoxTalosMachineTemplateReconciler) clusterTalos(ctx context.Context, tmpl *infrav1.ProxmoxTalosMachineTemplate) (*infrav1.TalosImageSpec, error) {
	name := clusterNameOf(tmpl)
	if name == "" {
		return nil, nil
	}
	cl, err := util.GetClusterByName(ctx, r.Client, tmpl.Namespace, name)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading Cluster %s/%s of ProxmoxTalosMachineTemplate %s: %w", tmpl.Namespace, name, tmpl.Name, err)
	}
	ref := cl.Spec.InfrastructureRef
	if ref.Kind != "ProxmoxTalosCluster" || ref.APIGroup != infrav1.GroupVersion.Group || ref.Name == "" {
		return nil, nil
	}
	infra := &infrav1.ProxmoxTalosCluster{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: tmpl.Namespace, Name: ref.Name}, infra); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading ProxmoxTalosCluster %s/%s of ProxmoxTalosMachineTemplate %s: %w", tmpl.Namespace, ref.Name, tmpl.Name, err)
	}
	return &infra.Spec.Talos, nil
}
