// Package cluster holds the steps that make a ProxmoxTalosCluster provisioned:
// credentials, preflight checks, control-plane endpoint and failure domains, and the
// deletion that waits for every machine of the cluster to be gone.
//
// Steps run in order on every reconcile; each one sets its condition and either lets the
// next run or stops the pass with a requeue. Steps whose result is already recorded make
// no Proxmox call, so a provisioned, idle cluster costs nothing.
package cluster

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/backoff"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// Reconciler runs the ProxmoxTalosCluster steps.
type Reconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Proxmox  clients.ProxmoxFactory
	Timing   backoff.Timing
	// PreflightInterval is how often a passed preflight is repeated (a revoked privilege or
	// a removed storage shows up on the cluster, not only on the next machine). Default 10m.
	PreflightInterval time.Duration
	// ImageGC collects Talos images no machine uses any more (image_gc.go); nil turns the
	// collection off. It outlives the Reconciler, which is built for each pass.
	ImageGC *ImageGC
}

// Scope is one pass over one cluster.
type Scope struct {
	Cluster      *clusterv1.Cluster
	InfraCluster *infrav1.ProxmoxTalosCluster
	// Spec is InfraCluster.Spec with defaults applied, for reading; writes go to
	// InfraCluster.Spec.
	Spec infrav1.ProxmoxTalosClusterSpec

	credentials *corev1.Secret
	pve         proxmox.Client
}

// NewScope prepares a pass.
func NewScope(cluster *clusterv1.Cluster, infra *infrav1.ProxmoxTalosCluster) *Scope {
	spec := *infra.Spec.DeepCopy()
	spec.Default()
	return &Scope{Cluster: cluster, InfraCluster: infra, Spec: spec}
}

// step is one step of the pass: done=false stops the pass with res.
type step func(ctx context.Context, s *Scope) (done bool, res ctrl.Result, err error)

// ReconcileNormal runs the creation steps in order.
func (r *Reconciler) ReconcileNormal(ctx context.Context, s *Scope) (ctrl.Result, error) {
	for _, st := range []step{
		r.reconcileCredentials,
		r.reconcilePreflight,
		r.reconcileEndpoint,
		r.reconcileFailureDomains,
		r.reconcileProvisioned,
	} {
		done, res, err := st(ctx, s)
		if err != nil || !done {
			return res, err
		}
	}
	return r.reconcileImageGC(ctx, s), nil
}

// reconcileProvisioned publishes the contract's milestone. It is one-way: a Proxmox
// outage later is reported by conditions, not by un-provisioning the cluster.
func (r *Reconciler) reconcileProvisioned(_ context.Context, s *Scope) (bool, ctrl.Result, error) {
	if !ptr.Deref(s.InfraCluster.Status.Initialization.Provisioned, false) {
		s.InfraCluster.Status.Initialization.Provisioned = ptr.To(true)
		r.event(s, corev1.EventTypeNormal, "Provisioned", "Cluster infrastructure is ready for machines")
	}
	return true, ctrl.Result{}, nil
}

func (r *Reconciler) setCondition(s *Scope, t string, ok bool, reason, msg string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	conditions.Set(s.InfraCluster, metav1.Condition{
		Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: s.InfraCluster.Generation,
	})
}

// requeue waits longer the longer condition t has been in its current state.
func (r *Reconciler) requeue(s *Scope, t string) ctrl.Result {
	var since time.Time
	if c := conditions.Get(s.InfraCluster, t); c != nil {
		since = c.LastTransitionTime.Time
	}
	return ctrl.Result{RequeueAfter: r.Timing.After(since, time.Now())}
}

func (r *Reconciler) event(s *Scope, eventType, reason, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(s.InfraCluster, nil, eventType, reason, reason, note, args...)
	}
}

func hasMessage(cs []metav1.Condition, t, msg string) bool {
	for _, c := range cs {
		if c.Type == t {
			return c.Message == msg
		}
	}
	return false
}
