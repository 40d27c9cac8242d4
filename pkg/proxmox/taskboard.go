package proxmox

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Reading the state of many tasks with one call.
//
// Every task a machine starts (boot ISO upload, create, resize, start, and on deletion
// shutdown and destroy) is followed until it ends, and in a burst of creates the status
// reads are most of the calls: one per task per poll, about five per VM. A node's task list
// (GET /nodes/{node}/tasks?source=all) shows every task of the token's user on the node,
// running or ended with its exit status, so one list read answers every task asked about
// on that node at about the same time. The board batches those questions: while other
// tasks on the node are being followed (their last read found them running), or while the
// node is busy (tasks of two other VMs were asked about within the last second, even if
// each ended as soon as it was asked about), a question waits until the spacing after the last
// read of the node, and that read answers every task asked about meanwhile; otherwise it
// is read at once. A machine alone waits no longer than with its own status read; on a
// busy node the list is read about once a second, whatever the number of tasks on it, and
// a task is seen ended up to a second later. (A list read costs pveproxy more than a status
// read, since node_tasks parses the node's whole task index, but far less than the status
// reads it replaces in a burst.)
//
// The list says less than a task's own status in two ways, both from pve-manager's node
// task list and pve-common's PVE::RESTEnvironment:
//   - it is read from the node's task files, which the daemon that forked a task updates
//     when it reaps the task (worker_reaper → active_workers). A daemon process recycled
//     while its task ran never reaps it: the list shows the task running until the next
//     task starts on that node (fork_worker calls active_workers, which checks every
//     listed task's process). The task's own status checks the process itself.
//   - it is capped (limit), newest first.
//
// So an ended state in the list is final, and a task missing from it is read by its own
// status; "running" is believed for listTrust after the list first said so (at least
// twice the learned first poll of its type: most tasks end well within it), then the
// task's own status is read on each poll. A stuck list costs one extra read per poll of a
// long task, never a wrong answer.

const (
	// defaultTaskListSpacing is the least time between two task-list reads of a busy node.
	defaultTaskListSpacing = time.Second
	// A node is busy when tasks of busyOwners other VMs were asked about within
	// busyWindow: one machine's own tasks, one after another, never make it busy, nor do
	// machines that come one at a time.
	busyOwners = 2
	busyWindow = time.Second
	// taskListLimit caps one list read. Tasks are listed since the oldest one asked
	// about, so a list this long means hundreds of tasks started on the node meanwhile.
	taskListLimit = 500
	// boardForget drops what the board remembers of a task asked about no more.
	boardForget = time.Hour
	// followingForget: a task not asked about for this long is no longer followed.
	followingForget = time.Minute
)

// listTrustMin is the least time a "running" in the list is believed (a variable for
// tests).
var listTrustMin = 10 * time.Second

// taskBoard is the per-endpoint state of the batched reads: per token and node, the
// list read being gathered, and when each task was first listed as running.
type taskBoard struct {
	mu      sync.Mutex
	nodes   map[string]*nodeTaskList // token|node
	running map[string]time.Time     // upid -> first listed running
	pruned  time.Time
}

type nodeTaskList struct {
	lastSent time.Time
	// askedBy is when tasks of each VM were last asked about.
	askedBy map[string]time.Time
	// following are the tasks the last reads found running, and when they were last
	// asked about: while other tasks than the asker's are followed, a read waits for the
	// spacing and answers them all; a task followed alone is read at once.
	following map[string]time.Time
	next      *taskListRead
}

// busy records a question about a task of owner (a VMID; "" for tasks of no VM, such as
// uploads, which do not count) and reports whether tasks of busyOwners other VMs were asked
// about within busyWindow.
func (n *nodeTaskList) busy(owner string, now time.Time) bool {
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

// followedElsewhere reports whether tasks other than upid are being followed on the node.
func (n *nodeTaskList) followedElsewhere(upid string, now time.Time) bool {
	for u, at := range n.following {
		if now.Sub(at) > followingForget {
			delete(n.following, u)
			continue
		}
		if u != upid {
			return true
		}
	}
	return false
}

// taskListRead is one list read and the questions it answers.
type taskListRead struct {
	done   chan struct{}
	asked  map[string]bool
	since  int64 // oldest start (PVE's unix seconds) among the tasks asked about
	states map[string]TaskState
	full   bool
	err    error
}

// taskState is the state of task upid: from its node's task list where that is
// conclusive, else from the task's own status.
func (c *PVEClient) taskState(ctx context.Context, upid string) (TaskState, error) {
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
	read, err := c.joinTaskList(ctx, node, upid, spacing)
	if err != nil {
		if ctx.Err() != nil {
			return TaskState{}, err
		}
		// The list is a shortcut; the task's own status still answers.
		return c.taskStatus(ctx, upid)
	}
	st, ok := read.states[upid]
	if !ok {
		// Not listed: beyond the limit, or a list that lags. Ask the task.
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

// joinTaskList adds upid to the list read being gathered for its node (starting one if
// none is) and waits for that read.
func (c *PVEClient) joinTaskList(ctx context.Context, node, upid string, spacing time.Duration) (*taskListRead, error) {
	b := &c.ep.board
	key := c.tokenID + "|" + node
	start := upidStart(upid)
	b.mu.Lock()
	if b.nodes == nil {
		b.nodes = map[string]*nodeTaskList{}
	}
	n := b.nodes[key]
	if n == nil {
		n = &nodeTaskList{}
		b.nodes[key] = n
	}
	busy := n.busy(taskOwner(upid), c.nowFn())
	read := n.next
	if read == nil {
		read = &taskListRead{done: make(chan struct{}), since: start, asked: map[string]bool{}}
		n.next = read
		var wait time.Duration
		if now := c.nowFn(); busy || n.followedElsewhere(upid, now) {
			wait = max(n.lastSent.Add(spacing).Sub(now), 0)
		}
		go c.sendTaskList(context.WithoutCancel(ctx), b, n, node, read, wait)
	} else if start < read.since {
		read.since = start
	}
	read.asked[upid] = true
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
func (c *PVEClient) sendTaskList(ctx context.Context, b *taskBoard, n *nodeTaskList, node string, read *taskListRead, wait time.Duration) {
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
	since := read.since
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(withOp(ctx, "TaskList"), c.cfg.RequestTimeout)
	defer cancel()
	q := url.Values{"source": {"all"}, "limit": {strconv.Itoa(taskListLimit)}}
	if since > 0 {
		q.Set("since", strconv.FormatInt(since, 10))
	}
	user, token, _ := strings.Cut(c.tokenID, "!")
	if user != "" {
		q.Set("userfilter", user)
	}
	var ws []wireTaskListEntry
	if err := c.do(ctx, http.MethodGet, "/nodes/"+url.PathEscape(node)+"/tasks", q, nil, &ws); err != nil {
		read.err = fmt.Errorf("list tasks of node %s: %w", node, err)
		return
	}
	read.full = len(ws) >= taskListLimit
	states := make(map[string]TaskState, len(ws))
	for _, w := range ws {
		t := taskFromList(w, node)
		tu, tt, _ := strings.Cut(t.User, "!")
		if !strings.EqualFold(tu, user) || tt != token {
			continue
		}
		states[t.UPID] = t
	}
	b.mu.Lock()
	read.states = states
	if n.following == nil {
		n.following = map[string]time.Time{}
	}
	now := c.nowFn()
	for upid := range read.asked {
		if st, ok := states[upid]; ok && st.Running {
			n.following[upid] = now
		} else {
			delete(n.following, upid)
		}
	}
	b.mu.Unlock()
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

// upidStart is the start time field of a UPID (unix seconds, hex), 0 if unreadable.
func upidStart(upid string) int64 {
	f := strings.Split(upid, ":")
	if len(f) < 7 {
		return 0
	}
	v, err := strconv.ParseInt(f[4], 16, 64)
	if err != nil {
		return 0
	}
	return v
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
