// Package machine is the ProxmoxTalosMachine step machine. Each step lives in its own file
// and reads top to bottom: it skips itself when its result is already recorded, does its
// work, sets status.step and its condition with a reason a person understands, and either
// lets the next step run or stops the pass with a requeue.
//
// Everything that identifies the VM (node, VMID, SMBIOS uuid, addresses) is written to the
// spec and persisted before the side effect that depends on it, so a controller that
// crashes at any point finds and adopts what it created instead of creating it again.
package machine

import (
	"context"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/backoff"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/workload"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// Timing tunes waits of the step machine.
type Timing struct {
	backoff.Timing
	// ShutdownTimeout bounds the graceful (ACPI) shutdown before a VM is stopped hard on
	// deletion. Default 60s.
	ShutdownTimeout time.Duration
	// StatusMaxAge is the oldest /cluster/resources snapshot a Running machine's periodic
	// power-state check accepts (the snapshot is shared by every machine on the same
	// Proxmox). Default 10s: pvestatd refreshes it every 10 s, so nothing fresher exists.
	StatusMaxAge time.Duration
	// NodeLossHandoverAfter is how long the Proxmox node of a machine being deleted may
	// stay offline before the deletion is handed over to a successor machine, so that
	// Cluster API can replace the machine (handover.go). Zero or negative: never; the
	// deletion waits for the node.
	NodeLossHandoverAfter time.Duration
}

func (t Timing) withDefaults() Timing {
	t.Timing = t.Timing.WithDefaults()
	if t.StatusMaxAge <= 0 {
		t.StatusMaxAge = 10 * time.Second
	}
	return t
}

// Reconciler runs the ProxmoxTalosMachine steps.
type Reconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Images   clients.ImageFactoryFactory
	// Workload reaches workload clusters' API servers (the machine's Node).
	Workload workload.Clients
	Timing   Timing
	// HTTPClient downloads images for ImageTransfer Upload. Default http.DefaultClient.
	HTTPClient *http.Client

	// placements remembers the nodes this process chose until the cache shows them, so
	// machines placed in parallel see each other and spread out.
	placements sync.Map // machine UID -> node
	placeMu    sync.Mutex
	// fresh remembers the VMID this process allocated for a machine until it sends the
	// create: nothing of the machine's can be at that VMID yet, so the pass that creates
	// needs no look first. Lost on restart, where the look is what prevents twins.
	fresh sync.Map // machine UID -> VMID
	// sentCreates remembers the UPID of the create this process sent for a machine: only
	// that task's success proves the VM at the VMID is the machine's without reading its
	// config (vm.go). Lost on restart, where the config is read.
	sentCreates sync.Map // machine UID -> UPID
	// taskStarts remembers when this process started each task it follows (create,
	// shutdown, stop, destroy) until it ends, which teaches the Proxmox client when such
	// tasks are best polled (status.task's start time has whole seconds only). Lost on
	// restart, where nothing is learned from the resumed task.
	taskStarts sync.Map // machine UID -> startedTask
	// offlineSince remembers when a deletion first found its VM's node offline, for the
	// hand-over (handover.go). Lost on restart, which only makes the wait longer.
	offlineSince sync.Map // machine UID -> time.Time
}

// Scope is one pass over one machine.
type Scope struct {
	Cluster      *clusterv1.Cluster
	InfraCluster *infrav1.ProxmoxTalosCluster
	Machine      *clusterv1.Machine
	PTM          *infrav1.ProxmoxTalosMachine
	PVE          proxmox.Client

	// ClusterSpec and Spec are the specs with defaults applied, for reading hardware and
	// image settings. Writes go to PTM.Spec.
	ClusterSpec infrav1.ProxmoxTalosClusterSpec
	Spec        infrav1.ProxmoxTalosMachineSpec

	imageVolID string
	// handover lists the offline Proxmox nodes when deleteVM decided to hand the
	// deletion over (handover.go).
	handover []string
	// justCreated: this pass saw the create task it recorded succeed, so the VM is
	// stopped (Proxmox creates VMs stopped) and startVM need not read its state first.
	justCreated bool
}

// NewScope prepares a pass.
func NewScope(cluster *clusterv1.Cluster, infra *infrav1.ProxmoxTalosCluster, machine *clusterv1.Machine, ptm *infrav1.ProxmoxTalosMachine, pve proxmox.Client) *Scope {
	cs := *infra.Spec.DeepCopy()
	cs.Default()
	s := &Scope{Cluster: cluster, InfraCluster: infra, Machine: machine, PTM: ptm, PVE: pve, ClusterSpec: cs}
	s.refreshSpec()
	return s
}

func (s *Scope) refreshSpec() {
	spec := *s.PTM.Spec.DeepCopy()
	spec.Default()
	s.Spec = spec
}

// result of a step: done=true lets the next step run.
type result struct {
	done bool
	res  ctrl.Result
}

func next() (result, error) { return result{done: true}, nil }

func stop(res ctrl.Result) (result, error) { return result{res: res}, nil }

type step func(ctx context.Context, s *Scope) (result, error)

// ReconcileNormal runs the creation steps in order until one stops the pass.
//
// Everything that needs no bootstrap data comes before waiting for it: the node, the
// addresses and the image (its download is the longest step) are ready by the time the
// bootstrap provider writes the data, which for workers is after the control plane has
// come up, so that wait hides them. No VM exists before the data: the create attaches the
// boot ISO that holds it.
func (r *Reconciler) ReconcileNormal(ctx context.Context, s *Scope) (ctrl.Result, error) {
	for _, st := range []step{
		r.waitForCluster,
		r.place,
		r.claimAddresses,
		r.prepareImage,
		r.waitForBootstrapData,
		r.buildBootISO,
		r.createVM,
		r.startVM,
		r.publish,
		r.waitForNode,
	} {
		out, err := st(ctx, s)
		if err != nil || !out.done {
			return out.res, err
		}
		s.refreshSpec()
	}
	return ctrl.Result{}, nil
}

// persistNow ends the pass right after a value was recorded in the spec: the deferred
// patch writes it, and the update event starts the next pass, which then reads the value
// back from the API before acting on it. The RequeueAfter is only a safety net.
func (r *Reconciler) persistNow() (result, error) {
	return stop(ctrl.Result{RequeueAfter: r.Timing.WithDefaults().Min})
}

func (r *Reconciler) setCondition(s *Scope, t string, ok bool, reason, msg string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	conditions.Set(s.PTM, metav1.Condition{Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: s.PTM.Generation})
}

// waitOn requeues with a delay that grows with the time condition t has been unchanged.
func (r *Reconciler) waitOn(s *Scope, t string) (result, error) {
	var since time.Time
	if c := conditions.Get(s.PTM, t); c != nil {
		since = c.LastTransitionTime.Time
	}
	return stop(ctrl.Result{RequeueAfter: r.Timing.After(since, time.Now())})
}

func (r *Reconciler) event(s *Scope, eventType, reason, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(s.PTM, nil, eventType, reason, reason, note, args...)
	}
}

func (r *Reconciler) warn(s *Scope, reason, note string, args ...any) {
	r.event(s, corev1.EventTypeWarning, reason, note, args...)
}

// ctrlResultNone stops the pass without a requeue: a watch brings the machine back.
var ctrlResultNone = ctrl.Result{}
