package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Reading the state of many tasks with one call.
//
// Every task a machine starts (boot ISO upload, create, resize, start, and on deletion
// shutdown and destroy) is followed until it ends, and in a burst of creates the status
// reads are most of the calls: one per task per poll, about five per VM. The cluster's task
// list (GET /cluster/tasks) shows every node's running tasks and its most recent finished
// ones with their exit status, so one read answers every task asked about at about the
// same time, on any node. It is also cheap for Proxmox: pve-manager answers it from
// pmxcfs's memory (PVE::Cluster::get_tasklist, the lists the nodes broadcast), where a
// node's task list parses its task index files. The board batches the questions: while the
// cluster is busy (tasks of two other VMs were asked about within the last second), a
// question waits until the spacing after the last read, and that read answers every task
// asked about meanwhile; otherwise it is read at once (and questions asked while that read
// is being sent share it). A machine alone, or machines coming one at a time, wait no
// longer than with their own status reads, and a machine's pass never waits because
// another machine's long task is followed; in a burst the list is read about once a
// second, whatever the number of tasks, and a task is seen ended up to a second later.
//
// The list says less than a task's own status, in ways read in pve-common's
// PVE::RESTEnvironment (active_workers, broadcast_tasklist) and pve-manager's
// PVE::API2::Cluster tasks:
//   - a node broadcasts its list when a task starts and when the daemon that forked a task
//     reaps it. A daemon process recycled while its task ran never reaps it: the list
//     shows the task running until the next task starts on that node (fork_worker calls
//     active_workers, which checks every listed task's process). The task's own status
//     checks the process itself.
//   - a node lists its running tasks and only as many finished ones as make 25 entries:
//     in a burst a task can drop out of the list soon after it ended.
//   - a token sees its tasks there only with Sys.Audit on "/" (the documented role has
//     it): the list compares the task's user, without the token name, to the caller's id.
//
// So an ended state in the list is final, and a task missing from it is read by its own
// status; "running" is believed for listTrustMin after the list first said so (at least
// twice the learned first poll of its type: most tasks end well within it), then the
// task's own status is read on each poll. A stuck list costs one extra read per poll of a
// long task, never a wrong answer.

const (
	// defaultTaskListSpacing is the least time between two task-list reads while busy.
	defaultTaskListSpacing = time.Second
	// The cluster is busy when tasks of busyOwners other VMs were asked about within
	// busyWindow: one machine's own tasks, one after another, never make it busy, nor do
	// two machines side by side. (With one other VM, a burst of 100 needs 7.4 calls per
	// create instead of 8.1, but a machine's pass then waits up to the spacing whenever
	// one other machine is working: see docs/performance.md.)
	busyOwners = 2
	busyWindow = time.Second
	// boardForget drops what the board remembers of a task asked about no more.
	boardForget = time.Hour
)

// listTrustMin is the least time a "running" in the list is believed (a variable for
// tests).
var listTrustMin = 10 * time.Second

// taskBoard is the per-endpoint state of the batched reads: per token, the list read
// being gathered, and when each task was first listed as running.
type taskBoard struct {
	mu      sync.Mutex
	lists   map[string]*taskList // token
	running map[string]time.Time // upid -> first listed running
	pruned  time.Time
}

type taskList struct {
	lastSent time.Time
	// askedBy is when tasks of each VM were last asked about.
	askedBy map[string]time.Time
	next    *taskListRead
}

// busy records a question about a task of owner (a VMID; "" for tasks of no VM, such as
// uploads, which do not count) and reports whether tasks of busyOwners other VMs were asked
// about within busyWindow.
func (n *taskList) busy(owner string, now time.Time) bool {
	if n.askedBy == nil {
		n.askedBy = map[string]time.Time{}
	}
	if owner != "" {
		n.askedBy[owner] = now
	}
	others := 0
	for o, at := range n.askedBy {
		if now.Sub(at) > busyWindow {
			delete(n.askedBy, o)
			continue
		}
		if o != owner {
			others++
		}
	}
	return others >= busyOwners
}

// taskOwner is the VMID a task works on ("" for tasks of no VM).
func taskOwner(upid string) string {
	if f := strings.Split(upid, ":"); len(f) >= 7 {
		return f[6]
	}
	return ""
}

// taskListRead is one list read and the questions it answers.
type taskListRead struct {
	done   chan struct{}
	states map[string]TaskState
	err    error
}

// taskState is the state of task upid: from the cluster's task list where that is
// conclusive, else from the task's own status. A task seen ended (or unknown to PVE) no
// longer holds a create slot.
func (c *PVEClient) taskState(ctx context.Context, upid string) (TaskState, error) {
	st, err := c.readTaskState(ctx, upid)
	if (err == nil && !st.Running) || errors.Is(err, ErrNotFound) {
		c.limiter.createEnded(upid)
	}
	return st, err
}

func (c *PVEClient) readTaskState(ctx context.Context, upid string) (TaskState, error) {
	node, typ := upidParts(upid)
	if node == "" {
		return TaskState{}, fmt.Errorf("%w: %q is not a PVE task id (UPID:node:...)", ErrInvalidConfig, upid)
	}
	spacing := c.cfg.TaskListSpacing
	if spacing < 0 {
		return c.taskStatus(ctx, upid)
	}
	if spacing == 0 {
		spacing = defaultTaskListSpacing
	}
	b := &c.ep.board
	now := c.nowFn()
	trust := max(listTrustMin, 2*c.TaskPollDelay(typ))
	if first, ok := b.firstListedRunning(upid); ok && now.Sub(first) > trust {
		return c.taskStatus(ctx, upid)
	}
	read, err := c.joinTaskList(ctx, upid, spacing)
	if err != nil {
		if ctx.Err() != nil {
			return TaskState{}, err
		}
		// The list is a shortcut; the task's own status still answers.
		return c.taskStatus(ctx, upid)
	}
	st, ok := read.states[upid]
	if !ok {
		// Not listed: dropped from its node's 25, the node's list not broadcast, or no
		// Sys.Audit on "/". Ask the task.
		return c.taskStatus(ctx, upid)
	}
	if st.Running {
		if first := b.listedRunning(upid, now); now.Sub(first) > trust {
			return c.taskStatus(ctx, upid)
		}
		return st, nil
	}
	b.forget(upid)
	return st, nil
}

// joinTaskList adds upid to the list read being gathered (starting one if none is) and
// waits for that read.
func (c *PVEClient) joinTaskList(ctx context.Context, upid string, spacing time.Duration) (*taskListRead, error) {
	b := &c.ep.board
	b.mu.Lock()
	if b.lists == nil {
		b.lists = map[string]*taskList{}
	}
	n := b.lists[c.tokenID]
	if n == nil {
		n = &taskList{}
		b.lists[c.tokenID] = n
	}
	busy := n.busy(taskOwner(upid), c.nowFn())
	read := n.next
	if read == nil {
		read = &taskListRead{done: make(chan struct{})}
		n.next = read
		var wait time.Duration
		if busy {
			wait = max(n.lastSent.Add(spacing).Sub(c.nowFn()), 0)
		}
		go c.sendTaskList(context.WithoutCancel(ctx), b, n, read, wait)
	}
	b.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-read.done:
	}
	if read.err != nil {
		return nil, read.err
	}
	return read, nil
}

// sendTaskList sends read after wait, on behalf of every task that joined it meanwhile.
func (c *PVEClient) sendTaskList(ctx context.Context, b *taskBoard, n *taskList, read *taskListRead, wait time.Duration) {
	defer close(read.done)
	if wait > 0 {
		if err := c.sleepFn(ctx, wait); err != nil {
			read.err = err
			return
		}
	}
	b.mu.Lock()
	n.next = nil
	n.lastSent = c.nowFn()
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(withOp(ctx, "TaskList"), c.cfg.RequestTimeout)
	defer cancel()
	var ws []wireTaskListEntry
	if err := c.do(ctx, http.MethodGet, "/cluster/tasks", nil, nil, &ws); err != nil {
		read.err = fmt.Errorf("list the cluster's tasks: %w", err)
		return
	}
	user, token, _ := strings.Cut(c.tokenID, "!")
	states := make(map[string]TaskState, len(ws))
	for _, w := range ws {
		t := taskFromList(w, w.Node)
		tu, tt, _ := strings.Cut(t.User, "!")
		if !strings.EqualFold(tu, user) || tt != token {
			continue
		}
		states[t.UPID] = t
	}
	read.states = states
}

// firstListedRunning is when the list first showed upid running, if it did.
func (b *taskBoard) firstListedRunning(upid string) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.running[upid]
	return t, ok
}

// listedRunning records that the list shows upid running and returns when it first did.
func (b *taskBoard) listedRunning(upid string, now time.Time) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running == nil {
		b.running = map[string]time.Time{}
	}
	if now.Sub(b.pruned) > boardForget {
		for k, t := range b.running {
			if now.Sub(t) > boardForget {
				delete(b.running, k)
			}
		}
		b.pruned = now
	}
	first, ok := b.running[upid]
	if !ok {
		first = now
		b.running[upid] = now
	}
	return first
}

func (b *taskBoard) forget(upid string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.running, upid)
}

// taskFromList converts an entry of a node's task list.
func taskFromList(w wireTaskListEntry, node string) TaskState {
	// A running task has no end time and the status "RUNNING".
	running := w.EndTime == 0 && (w.Status == "" || strings.EqualFold(w.Status, "running"))
	t := TaskState{
		UPID: w.UPID, Node: w.Node, Type: w.Type, ID: w.ID, User: w.User,
		Running: running, StartTime: unixTime(int64(w.StartTime)), EndTime: unixTime(int64(w.EndTime)),
	}
	if !running {
		t.ExitStatus = w.Status
		if t.ExitStatus == "" {
			t.ExitStatus = "unexpected status"
		}
	}
	if w.TokenID != "" {
		t.User += "!" + w.TokenID
	}
	if t.Node == "" {
		t.Node = node
	}
	return t
}
