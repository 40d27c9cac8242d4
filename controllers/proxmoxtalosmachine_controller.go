package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util"
	"sigs.k8s.io/cluster-api/util/annotations"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/cluster-api/util/finalizers"
	"sigs.k8s.io/cluster-api/util/patch"
	"sigs.k8s.io/cluster-api/util/paused"
	"sigs.k8s.io/cluster-api/util/predicates"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/cluster"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machine"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/workload"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// ProxmoxTalosMachineReconciler reconciles ProxmoxTalosMachine objects.
type ProxmoxTalosMachineReconciler struct {
	Client       client.Client
	Recorder     events.EventRecorder
	Proxmox      ProxmoxClientFactory
	ImageFactory ImageFactoryFactory
	// Workload gives access to workload clusters (to set Node.spec.providerID and see
	// the Node become Ready), only while a machine waits for its Node.
	Workload workload.Clients
	// WatchFilterValue is the value of the cluster.x-k8s.io/watch-filter label this
	// controller handles (empty: all).
	WatchFilterValue string
	// Timing bounds requeue delays and the graceful shutdown on deletion (zero: defaults).
	Timing machine.Timing
	// HTTPClient downloads images in ImageTransfer Upload mode (nil: http.DefaultClient).
	HTTPClient *http.Client

	steps *machine.Reconciler
	creds credentialsCache
	// written remembers the resourceVersion of this process's last write of each machine
	// (machine key -> writeRecord) until the cache shows it (stale.go).
	written sync.Map
}

// credentialsTTL is how long a machine pass reuses a credentials Secret read by an
// earlier pass. The Secret is not in the manager's cache (Secrets are read uncached so the
// cache does not hold every Secret of the cluster), and reading it on every pass of every
// machine was a third of the manager's API requests during a burst of creates. A rotated
// token reaches the machines within this time; the cluster controller reads it fresh.
const credentialsTTL = 30 * time.Second

// credentialsCache keeps recently read credentials Secrets by namespace/name.
type credentialsCache struct {
	mu sync.Mutex
	m  map[client.ObjectKey]cachedSecret
}

type cachedSecret struct {
	secret *corev1.Secret
	at     time.Time
}

func (c *credentialsCache) get(ctx context.Context, r client.Reader, infra *infrav1.ProxmoxTalosCluster) (*corev1.Secret, error) {
	key := client.ObjectKey{Namespace: infra.Namespace, Name: infra.Spec.Proxmox.CredentialsRef.Name}
	c.mu.Lock()
	if e, ok := c.m[key]; ok && time.Since(e.at) < credentialsTTL {
		c.mu.Unlock()
		return e.secret, nil
	}
	c.mu.Unlock()
	secret, err := cluster.GetCredentials(ctx, r, infra)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[client.ObjectKey]cachedSecret{}
	}
	c.m[key] = cachedSecret{secret: secret, at: time.Now()}
	c.mu.Unlock()
	return secret, nil
}

// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachines,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosmachines/finalizers,verbs=update
// +kubebuilder:rbac:groups=infrastructure.cluster.x-k8s.io,resources=proxmoxtalosclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups=cluster.x-k8s.io,resources=clusters;machines,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=ipam.cluster.x-k8s.io,resources=ipaddresses;ipaddressclaims,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=ipam.cluster.x-k8s.io,resources=ipaddressclaims/status,verbs=get;patch

// SetupWithManager registers the controller and its watches: the owner Machine (bootstrap
// data appears), the Cluster (unpause, infrastructure provisioned) and workload cluster
// connection changes.
func (r *ProxmoxTalosMachineReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, options controller.Options) error {
	if r.Client == nil || r.Proxmox == nil || r.ImageFactory == nil || r.Workload == nil {
		return errors.New("ProxmoxTalosMachineReconciler needs Client, Proxmox, ImageFactory and Workload")
	}
	log := ctrl.LoggerFrom(ctx).WithValues("controller", "proxmoxtalosmachine")
	r.steps = &machine.Reconciler{
		Client: r.Client, Recorder: r.Recorder, Images: r.ImageFactory, Workload: r.Workload,
		Timing: r.Timing, HTTPClient: r.HTTPClient,
	}
	clusterToMachines, err := util.ClusterToTypedObjectsMapper(mgr.GetClient(), &infrav1.ProxmoxTalosMachineList{}, mgr.GetScheme())
	if err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&infrav1.ProxmoxTalosMachine{}).
		WithOptions(options).
		WithEventFilter(predicates.ResourceHasFilterLabel(mgr.GetScheme(), log, r.WatchFilterValue)).
		WithEventFilter(predicates.ResourceIsNotExternallyManaged(mgr.GetScheme(), log)).
		Watches(&clusterv1.Machine{},
			handler.EnqueueRequestsFromMapFunc(util.MachineToInfrastructureMapFunc(infrav1.GroupVersion.WithKind("ProxmoxTalosMachine"))),
		).
		Watches(&clusterv1.Cluster{},
			handler.EnqueueRequestsFromMapFunc(clusterToMachines),
			builder.WithPredicates(predicates.ClusterPausedTransitionsOrInfrastructureProvisioned(mgr.GetScheme(), log)),
		).
		Complete(r)
}

// Reconcile drives one ProxmoxTalosMachine through its steps, or through deletion.
func (r *ProxmoxTalosMachineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, rerr error) {
	log := ctrl.LoggerFrom(ctx)
	ptm := &infrav1.ProxmoxTalosMachine{}
	if err := r.Client.Get(ctx, req.NamespacedName, ptm); err != nil {
		if apierrors.IsNotFound(err) {
			r.written.Delete(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.stale(ptm) {
		// The cache has not seen the last write of the previous pass yet: that write's
		// watch event brings the machine back at once. Acting on the older object would
		// repeat what the previous pass did and recorded (upload the boot ISO again, look
		// for a create in flight, read the VM just started).
		log.V(4).Info("Cached object older than this controller's last write; waiting for the cache", "resourceVersion", ptm.ResourceVersion)
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}, nil
	}
	// Every write of this pass goes through writes, and the next pass waits for the cache
	// to show the last of them (even after a partial failure: what was written is what
	// the next pass must see).
	writes := &versionRecorder{Client: r.Client}
	defer r.wrote(ptm, writes)
	if annotations.IsExternallyManaged(ptm) {
		return ctrl.Result{}, nil
	}

	owner, err := util.GetOwnerMachine(ctx, r.Client, ptm.ObjectMeta)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	ownerGone := false
	if owner == nil {
		if !ptm.DeletionTimestamp.IsZero() && ptm.Spec.VMID == nil && len(ptm.Spec.OwnedVolumes) == 0 {
			// Never got far enough to create anything on Proxmox.
			return ctrl.Result{}, r.dropFinalizer(ctx, ptm)
		}
		if ptm.DeletionTimestamp.IsZero() {
			log.V(4).Info("Waiting for Cluster API to set the owner Machine")
			return ctrl.Result{}, nil
		}
		// Being deleted and the owner Machine is gone (someone removed its finalizer, or
		// it was never set after a move): the VM is still deleted, through the cluster
		// named in the machine's labels, and a condition says so.
		ownerGone = true
	}
	clusterMeta := ptm.ObjectMeta
	if owner != nil {
		clusterMeta = owner.ObjectMeta
	}
	cl, err := util.GetClusterFromMetadata(ctx, r.Client, clusterMeta)
	if err != nil {
		log.V(4).Info("Waiting for the Machine's Cluster", "error", err.Error())
		return ctrl.Result{}, nil
	}
	if owner != nil {
		log = log.WithValues("Machine", owner.Name)
	}
	log = log.WithValues("Cluster", cl.Name)
	ctx = ctrl.LoggerInto(ctx, log)

	if ptm.DeletionTimestamp.IsZero() {
		if added, err := finalizers.EnsureFinalizer(ctx, writes, ptm, infrav1.MachineFinalizer); err != nil || added {
			return ctrl.Result{}, err
		}
	}
	helper, err := patch.NewHelper(ptm, writes)
	if err != nil {
		return ctrl.Result{}, err
	}
	if isPaused, requeue, err := paused.EnsurePausedCondition(ctx, writes, cl, ptm); err != nil || isPaused || requeue {
		return ctrl.Result{}, err
	}

	infra := &infrav1.ProxmoxTalosCluster{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: ptm.Namespace, Name: cl.Spec.InfrastructureRef.Name}, infra); err != nil {
		if apierrors.IsNotFound(err) && !ptm.DeletionTimestamp.IsZero() {
			// The cluster's Proxmox settings are gone (the cluster normally waits for its
			// machines, so someone removed its finalizer): nothing can delete the VM. Say
			// loudly what is left behind.
			left := "no VM"
			if ptm.Spec.VMID != nil {
				left = fmt.Sprintf("VM %d (smbios uuid %s) on Proxmox node %s", *ptm.Spec.VMID, ptm.Spec.SMBIOSUUID, ptm.Spec.Node)
			}
			for _, v := range ptm.Spec.OwnedVolumes {
				left += ", volume " + v.VolID + " on " + v.Node
			}
			if r.Recorder != nil {
				r.Recorder.Eventf(ptm, nil, corev1.EventTypeWarning, "InfrastructureClusterGone", "InfrastructureClusterGone",
					"ProxmoxTalosCluster %s is gone, so there are no Proxmox credentials to delete with: %s left behind; remove it by hand", cl.Spec.InfrastructureRef.Name, left)
			}
			log.Info("ProxmoxTalosCluster is gone; releasing the machine without deleting its VM", "leftBehind", left)
			return ctrl.Result{}, r.dropFinalizer(ctx, ptm)
		}
		log.V(4).Info("Waiting for the ProxmoxTalosCluster", "error", err.Error())
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min}, nil
	}

	defer func() {
		if err := patchMachine(ctx, helper, ptm); err != nil {
			rerr = kerrors.NewAggregate([]error{rerr, err})
		}
	}()

	pve, credErr := r.proxmoxFor(ctx, infra)
	scope := machine.NewScope(cl, infra, owner, ptm, pve)
	if !ptm.DeletionTimestamp.IsZero() {
		res, err := r.steps.ReconcileDelete(ctx, scope)
		if from := ptm.Annotations[infrav1.HandedOverFromAnnotation]; from != "" && ownerGone {
			// A successor has no owner Machine by design: its condition says whose VM it
			// holds, then where the deletion stands.
			prefix := fmt.Sprintf("Finishing the deletion of ProxmoxTalosMachine %s, handed over while its Proxmox node was offline.", from)
			if c := conditions.Get(ptm, infrav1.VMProvisionedCondition); c != nil && !strings.HasPrefix(c.Message, prefix) {
				c.Message = prefix + " " + c.Message
				conditions.Set(ptm, *c)
			}
			return res, err
		}
		if ownerGone {
			// Say so on the condition that reports the deletion's progress.
			const gone = "The owner Machine is gone; deleting the VM without it (stopped hard, as for a remediated machine)."
			msg := gone
			if c := conditions.Get(ptm, infrav1.VMProvisionedCondition); c != nil && !strings.HasPrefix(c.Message, gone) {
				msg += " " + c.Message
			} else if c != nil {
				msg = c.Message
			}
			conditions.Set(ptm, metav1.Condition{Type: infrav1.VMProvisionedCondition, Status: metav1.ConditionFalse,
				Reason: infrav1.OwnerMachineNotFoundReason, ObservedGeneration: ptm.Generation, Message: msg})
		}
		return res, err
	}
	if credErr != nil {
		conditions.Set(ptm, metav1Condition(infrav1.VMProvisionedCondition, infrav1.CredentialsInvalidReason,
			"The cluster's Proxmox credentials are not usable: "+credErr.Error()))
		return ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Max}, nil
	}
	return r.steps.ReconcileNormal(ctx, scope)
}

func (r *ProxmoxTalosMachineReconciler) proxmoxFor(ctx context.Context, infra *infrav1.ProxmoxTalosCluster) (proxmox.Client, error) {
	secret, err := r.creds.get(ctx, r.Client, infra)
	if err != nil {
		return nil, fmt.Errorf("reading credentials Secret %s: %w", infra.Spec.Proxmox.CredentialsRef.Name, err)
	}
	return r.Proxmox.ClientFor(infra, secret)
}

func (r *ProxmoxTalosMachineReconciler) dropFinalizer(ctx context.Context, ptm *infrav1.ProxmoxTalosMachine) error {
	if !controllerutil.ContainsFinalizer(ptm, infrav1.MachineFinalizer) {
		return nil
	}
	base := ptm.DeepCopy()
	controllerutil.RemoveFinalizer(ptm, infrav1.MachineFinalizer)
	return r.Client.Patch(ctx, ptm, client.MergeFrom(base))
}

// machineConditions make up Ready. NodeReady and BootISOReady are reported but not
// summarised: Ready is the infrastructure's readiness, which Cluster API mirrors into the
// Machine's InfrastructureReady, while node health is Cluster API's own NodeHealthy; and
// BootISOReady turns False on purpose once the ISO is deleted.
var machineConditions = []string{
	infrav1.BootstrapDataReadyCondition,
	infrav1.PlacedCondition,
	infrav1.AddressesClaimedCondition,
	infrav1.VMProvisionedCondition,
	infrav1.VMRunningCondition,
}

func patchMachine(ctx context.Context, helper *patch.Helper, ptm *infrav1.ProxmoxTalosMachine) error {
	if err := conditions.SetSummaryCondition(ptm, ptm, infrav1.ReadyCondition, conditions.ForConditionTypes(machineConditions)); err != nil {
		return fmt.Errorf("summarising conditions: %w", err)
	}
	ptm.Status.ObservedGeneration = ptm.Generation
	owned := append([]string{infrav1.ReadyCondition, infrav1.PausedCondition, infrav1.ImageReadyCondition,
		infrav1.BootISOReadyCondition, infrav1.NodeReadyCondition}, machineConditions...)
	return helper.Patch(ctx, ptm, patch.WithOwnedConditions{Conditions: owned})
}
