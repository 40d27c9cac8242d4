package machine

import (
	"context"
	"errors"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

// Long Proxmox tasks are started, recorded in status.task, and followed on later passes:
// no pass waits for one. The record is written by the pass that started the task (the
// deferred status patch), so a controller that restarts finds it; should that write be
// lost, each step knows how to recognise its own task from what Proxmox shows (the
// VM's lock and the node's task list).

// recordTask remembers a task found running (resumed from the node's task list).
func recordTask(s *Scope, upid, typ, node string, vmid int) {
	s.PTM.Status.Task = &infrav1.ProxmoxTask{
		UPID: upid, Type: typ, Node: node, VMID: ptr.To(int32(vmid)), StartTime: metav1.Now(),
	}
}

// startedTask is a task this process started and follows: when it started, and the age
// at which a poll last found it running (zero: not seen running yet).
type startedTask struct {
	upid      string
	at        time.Time
	runningAt time.Duration
}

// recordStarted remembers a task this pass started, and its exact start for learning.
func (r *Reconciler) recordStarted(s *Scope, upid, typ, node string, vmid int) {
	r.taskStarts.Store(s.PTM.UID, startedTask{upid: upid, at: time.Now()})
	recordTask(s, upid, typ, node, vmid)
}

// taskOutcome is what became of the recorded task.
type taskOutcome int

const (
	// taskNone: no task of this type is recorded (or Proxmox no longer knows it).
	taskNone taskOutcome = iota
	// taskRunning: still running; requeue.
	taskRunning
	// taskSucceeded: ended OK; the record is cleared.
	taskSucceeded
	// taskFailed: ended with an error (returned); the record is cleared.
	taskFailed
)

// followTask polls the recorded task if it is one of types. A task that ended is removed
// from status; the caller decides what its outcome means. A task younger than its first
// poll delay (learned per task type by the Proxmox client) is not polled: the pass that
// follows the status write recording it comes at once, and the task is most likely still
// running.
func (r *Reconciler) followTask(ctx context.Context, s *Scope, types ...string) (taskOutcome, time.Duration, error) {
	t := s.PTM.Status.Task
	if t == nil {
		return taskNone, 0, nil
	}
	match := false
	for _, typ := range types {
		match = match || t.Type == typ
	}
	if !match {
		return taskNone, 0, nil
	}
	started, mine := r.taskStart(s)
	if age := time.Since(started); !started.IsZero() && age >= 0 && age < r.firstPoll(s) {
		return taskRunning, age, nil
	}
	st, err := s.PVE.TaskStatus(ctx, t.UPID)
	if errors.Is(err, proxmox.ErrNotFound) || errors.Is(err, proxmox.ErrBadRequest) {
		// PVE no longer knows the task (rotated out of the index, or the node was
		// reinstalled): what it did is read from the VM itself.
		s.PTM.Status.Task = nil
		return taskNone, 0, nil
	}
	if err != nil {
		return taskNone, 0, err
	}
	if mine {
		if st.Running {
			r.taskStarts.Store(s.PTM.UID, startedTask{upid: t.UPID, at: started, runningAt: time.Since(started)})
		} else if prev, ok := r.taskStarts.LoadAndDelete(s.PTM.UID); ok {
			s.PVE.ObserveTask(t.Type, prev.(startedTask).runningAt, time.Since(started))
		}
	}
	if st.Running {
		return taskRunning, time.Since(t.StartTime.Time), nil
	}
	s.PTM.Status.Task = nil
	if err := st.Err(); err != nil {
		return taskFailed, 0, err
	}
	return taskSucceeded, 0, nil
}

// taskStart is when the recorded task started: exactly, if this process started it (mine),
// else status.task's start time (whole seconds).
func (r *Reconciler) taskStart(s *Scope) (time.Time, bool) {
	t := s.PTM.Status.Task
	if t == nil {
		return time.Time{}, false
	}
	if v, ok := r.taskStarts.Load(s.PTM.UID); ok && v.(startedTask).upid == t.UPID {
		return v.(startedTask).at, true
	}
	return t.StartTime.Time, false
}

// firstPoll is how long after its start the recorded task is first polled: what the
// Proxmox client learned for its type, at most Max.
func (r *Reconciler) firstPoll(s *Scope) time.Duration {
	limit := r.Timing.withDefaults().Max
	if s.PTM.Status.Task == nil || s.PVE == nil {
		return limit
	}
	return min(s.PVE.TaskPollDelay(s.PTM.Status.Task.Type), limit)
}

// taskRequeue is how long to wait before polling a running task again: first the first
// poll delay after its start, then twice as long as it has run so far (polls at d, 3d,
// 9d, ... of its age), capped at Max. A long import costs a handful of polls (log3 of its
// duration) instead of one every few seconds, and is seen at most three times its
// duration late.
func (r *Reconciler) taskRequeue(s *Scope) time.Duration {
	t := r.Timing.withDefaults()
	started, _ := r.taskStart(s)
	if started.IsZero() {
		return t.Min
	}
	age := time.Since(started)
	switch first := r.firstPoll(s); {
	case age < first:
		// Not polled yet.
		return first - age
	case 2*age > t.Max:
		return t.Max
	default:
		return 2 * age
	}
}

// taskRunningSince says how long a task has run in a condition message without changing
// on every pass: a message that changes makes the status patch wake the machine again at
// once, and that pass would poll the task again.
func taskRunningSince(s *Scope) string {
	if t := s.PTM.Status.Task; t != nil && !t.StartTime.IsZero() {
		return "since " + t.StartTime.UTC().Format(time.RFC3339)
	}
	return ""
}
