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

// recordTask remembers a task this pass started.
func recordTask(s *Scope, upid, typ, node string, vmid int) {
	s.PTM.Status.Task = &infrav1.ProxmoxTask{
		UPID: upid, Type: typ, Node: node, VMID: ptr.To(int32(vmid)), StartTime: metav1.Now(),
	}
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
// from status; the caller decides what its outcome means. A task younger than the first
// poll delay is not polled: the pass that follows the status write recording it comes at
// once, and no Proxmox task ends that fast.
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
	if age := time.Since(t.StartTime.Time); !t.StartTime.IsZero() && age >= 0 && age < r.Timing.withDefaults().TaskPoll {
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
	if st.Running {
		return taskRunning, time.Since(t.StartTime.Time), nil
	}
	s.PTM.Status.Task = nil
	if err := st.Err(); err != nil {
		return taskFailed, 0, err
	}
	return taskSucceeded, 0, nil
}

// taskRequeue is how long to wait before polling a running task again: first TaskPoll
// after its start, then twice as long as it has run so far (polls at 0.25 s, 0.75 s,
// 2.25 s, 6.75 s, ... of its age), capped at Max. A task that ends at once is seen at
// once; a long import costs a handful of polls (log3 of its duration) instead of one
// every few seconds, and is seen at most three times its duration late.
func (r *Reconciler) taskRequeue(s *Scope) time.Duration {
	t := r.Timing.withDefaults()
	var age time.Duration
	if st := s.PTM.Status.Task; st != nil && !st.StartTime.IsZero() {
		age = time.Since(st.StartTime.Time)
	}
	switch {
	case age < t.TaskPoll:
		// Not polled yet: the first poll is TaskPoll after the start.
		if d := t.TaskPoll - age; d > 0 {
			return d
		}
		return t.TaskPoll
	case age > t.Max:
		return t.Max
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
