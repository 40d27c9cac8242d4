package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util"
	"sigs.k8s.io/cluster-api/util/annotations"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/cluster-api/util/finalizers"
	"sigs.k8s.io/cluster-api/util/patch"
	"sigs.k8s.io/cluster-api/util/paused"
	"sigs.k8s.io/cluster-api/util/predicates"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/backoff"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
)

// ProxmoxTalosClusterReconciler reconciles ProxmoxTalosCluster objects.
type ProxmoxTalosClusterReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Proxmox  ProxmoxClientFactory
	// WatchFilterValue is the value of the cluster.x-k8s.io/watch-filter label this
	// controller handles (empty: all).
	WatchFilterValue string
	// Timing bounds requeue delays while waiting (zero: defaults).
	Timing backoff.Timing
	// ImageGCGrace is how long a Talos image must be unused by every machine on its
	// storage before it is deleted (zero: cluster.DefaultImageGCGrace); negative turns the
	// collection of unused images off.
	ImageGCGrace time.Duration

	imageGC *cluster.ImageGC
}

// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups=cluster.x-k8s.io,resources=clusters,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=ipam.cluster.x-k8s.io,resources=ipaddresses;ipaddressclaims,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=ipam.cluster.x-k8s.io,resources=ipaddressclaims/status,verbs=get;patch

// SetupWithManager registers the controller. Cluster events are filtered to pause
// transitions, so an idle cluster causes no reconciles.
func (r *ProxmoxTalosClusterReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, options controller.Options) error {
	if r.Client == nil || r.Proxmox == nil {
		return errors.New("ProxmoxTalosClusterReconciler needs Client and Proxmox")
	}
	log := ctrl.LoggerFrom(ctx).WithValues("controller", "proxmoxtaloscluster")
	if r.ImageGCGrace >= 0 {
		r.imageGC = &cluster.ImageGC{Grace: r.ImageGCGrace, Reader: mgr.GetAPIReader()}
	}
	gvk := infrav1.GroupVersion.WithKind("ProxmoxTalosCluster")
	return ctrl.NewControllerManagedBy(mgr).
		For(&infrav1.ProxmoxTalosCluster{}).
		WithOptions(options).
		WithEventFilter(predicates.ResourceHasFilterLabel(mgr.GetScheme(), log, r.WatchFilterValue)).
		WithEventFilter(predicates.ResourceIsNotExternallyManaged(mgr.GetScheme(), log)).
		Watches(&clusterv1.Cluster{},
			handler.EnqueueRequestsFromMapFunc(util.ClusterToInfrastructureMapFunc(ctx, gvk, mgr.GetClient(), &infrav1.ProxmoxTalosCluster{})),
			builder.WithPredicates(predicates.ClusterPausedTransitions(mgr.GetScheme(), log)),
		).
		// A deleting cluster waits for its machines; hearing about each one going away
		// finishes the deletion without polling.
		Watches(&infrav1.ProxmoxTalosMachine{},
			handler.EnqueueRequestsFromMapFunc(r.machineToCluster),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc: func(event.CreateEvent) bool { return false },
				UpdateFunc: func(event.UpdateEvent) bool { return false },
				DeleteFunc: func(event.DeleteEvent) bool { return true },
			}),
		).
		Complete(r)
}

// machineToCluster maps a ProxmoxTalosMachine to its cluster's ProxmoxTalosCluster.
func (r *ProxmoxTalosClusterReconciler) machineToCluster(ctx context.Context, o client.Object) []ctrl.Request {
	name := o.GetLabels()[clusterv1.ClusterNameLabel]
	if name == "" {
		return nil
	}
	cl := &clusterv1.Cluster{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: o.GetNamespace(), Name: name}, cl); err != nil {
		return nil
	}
	if cl.Spec.InfrastructureRef.Kind != "ProxmoxTalosCluster" || cl.Spec.InfrastructureRef.Name == "" {
		return nil
	}
	return []ctrl.Request{{NamespacedName: client.ObjectKey{Namespace: o.GetNamespace(), Name: cl.Spec.InfrastructureRef.Name}}}
}

// Reconcile drives one ProxmoxTalosCluster towards provisioned, or through deletion.
func (r *ProxmoxTalosClusterReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, rerr error) {
	log := ctrl.LoggerFrom(ctx)
	infra := &infrav1.ProxmoxTalosCluster{}
	if err := r.Client.Get(ctx, req.NamespacedName, infra); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if annotations.IsExternallyManaged(infra) {
		return ctrl.Result{}, nil
	}

	owner, err := util.GetOwnerCluster(ctx, r.Client, infra.ObjectMeta)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	if owner == nil && infra.DeletionTimestamp.IsZero() {
		log.V(4).Info("Waiting for Cluster API to set the owner Cluster")
		return ctrl.Result{}, nil
	}

	if infra.DeletionTimestamp.IsZero() {
		if added, err := finalizers.EnsureFinalizer(ctx, r.Client, infra, infrav1.ClusterFinalizer); err != nil || added {
			return ctrl.Result{}, err
		}
	}

	helper, err := patch.NewHelper(infra, r.Client)
	if err != nil {
		return ctrl.Result{}, err
	}
	if owner != nil {
		if isPaused, requeue, err := paused.EnsurePausedCondition(ctx, r.Client, owner, infra); err != nil || isPaused || requeue {
			return ctrl.Result{}, err
		}
	}

	defer func() {
		if err := patchCluster(ctx, helper, infra); err != nil {
			rerr = kerrors.NewAggregate([]error{rerr, err})
		}
	}()

	steps := &cluster.Reconciler{Client: r.Client, Recorder: r.Recorder, Proxmox: r.Proxmox, Timing: r.Timing, ImageGC: r.imageGC}
	scope := cluster.NewScope(owner, infra)
	if !infra.DeletionTimestamp.IsZero() {
		return steps.ReconcileDelete(ctx, scope)
	}
	return steps.ReconcileNormal(ctx, scope)
}

var clusterConditions = []string{
	infrav1.CredentialsReadyCondition,
	infrav1.PreflightChecksPassedCondition,
	infrav1.ControlPlaneEndpointReadyCondition,
}

func patchCluster(ctx context.Context, helper *patch.Helper, infra *infrav1.ProxmoxTalosCluster) error {
	if infra.DeletionTimestamp.IsZero() {
		if err := conditions.SetSummaryCondition(infra, infra, infrav1.ReadyCondition, conditions.ForConditionTypes(clusterConditions)); err != nil {
			return fmt.Errorf("summarising conditions: %w", err)
		}
	}
	infra.Status.ObservedGeneration = infra.Generation
	return helper.Patch(ctx, infra, patch.WithOwnedConditions{Conditions: append([]string{infrav1.ReadyCondition, infrav1.PausedCondition}, clusterConditions...)})
}
