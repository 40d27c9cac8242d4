package proxmox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Starting and following tasks.
//
// Long PVE tasks (a VM create that imports a disk image, a graceful shutdown, an image
// download) must not be waited for inside a controller's Reconcile: a pass has to end in
// bounded time, and a controller that restarts while it waits would lose track of the
// task. The Start* methods therefore only start a task and return its UPID; the caller
// records the UPID (in the object's status) before anything else and follows it with
// TaskStatus on later passes. When the record was lost (the controller crashed between
// the start and the status write), ListTasks finds the task on its node by type, VMID and
// the token's user.

// TaskState is a PVE task as GET /nodes/{node}/tasks/{upid}/status or the node's task
// list reports it.
type TaskState struct {
	UPID string
	Node string
	// Type is the task type (qmcreate, qmstart, qmshutdown, qmstop, qmdestroy, hastart,
	// hastop, download, ...); ID its object (the VMID for qm* tasks).
	Type string
	ID   string
	// User started the task: "user@realm!token" for API tokens.
	User string
	// Running is true until the task ends; ExitStatus is then "OK", "WARNINGS: n" or the
	// error (the last line of the task log).
	Running    bool
	ExitStatus string
	StartTime  time.Time
	EndTime    time.Time
}

// Succeeded reports a task that ended with OK or warnings.
func (t TaskState) Succeeded() bool { return !t.Running && taskOK(t.ExitStatus) }

// Err is nil while the task runs or when it succeeded, else a *TaskError.
func (t TaskState) Err() error {
	if t.Running || taskOK(t.ExitStatus) {
		return nil
	}
	return taskErrorFor(t.UPID, t.Node, t.Type, t.ExitStatus)
}

// TaskFilter selects tasks in ListTasks. Empty fields match everything.
type TaskFilter struct {
	// Type is PVE's typefilter (e.g. "qmcreate").
	Type string
	// VMID restricts to tasks of one VM.
	VMID int
	// User is PVE's userfilter; "me" means the user (and token) of this client.
	User string
	// Source is "active" (running tasks only), "archive" or "all" (PVE's default is
	// archive, which holds finished tasks).
	Source string
	// Limit caps the number of tasks returned (PVE's default is 50).
	Limit int
}

// TaskUser is the user PVE records for tasks this client starts: the token id
// ("user@realm!token").
func (c *PVEClient) TaskUser() string { return c.tokenID }

// TaskStatus implements Client. The answer comes from the node's task list when other
// tasks on the node are asked about at the same time (taskboard.go).
func (c *PVEClient) TaskStatus(ctx context.Context, upid string) (TaskState, error) {
	var out TaskState
	err := c.run(ctx, "TaskStatus", func(ctx context.Context) error {
		var err error
		out, err = c.taskState(ctx, upid)
		return err
	})
	return out, err
}

// taskStatus reads one task's own status (GET /nodes/{node}/tasks/{upid}/status).
func (c *PVEClient) taskStatus(ctx context.Context, upid string) (TaskState, error) {
	node, typ := upidParts(upid)
	if node == "" {
		return TaskState{}, fmt.Errorf("%w: %q is not a PVE task id (UPID:node:...)", ErrInvalidConfig, upid)
	}
	var w wireTaskStatus
	path := "/nodes/" + url.PathEscape(node) + "/tasks/" + url.PathEscape(upid) + "/status"
	if err := c.do(ctx, http.MethodGet, path, nil, nil, &w); err != nil {
		return TaskState{}, fmt.Errorf("status of task %s on %s: %w", typ, node, err)
	}
	out := TaskState{
		UPID: upid, Node: node, Type: typ, ID: w.ID, User: w.User,
		Running: w.Status != "stopped", ExitStatus: w.ExitStatus,
		StartTime: unixTime(int64(w.StartTime)),
	}
	if w.Type != "" {
		out.Type = w.Type
	}
	if w.Status == "stopped" && out.ExitStatus == "" {
		// PVE reports a task that died without a status line as "unexpected status".
		out.ExitStatus = "unexpected status"
	}
	return out, nil
}

// TaskPollDelay implements Client.
func (c *PVEClient) TaskPollDelay(taskType string) time.Duration {
	return c.ep.tasks.firstPoll(taskType, c.pollInit)
}

// ObserveTask implements Client.
func (c *PVEClient) ObserveTask(taskType string, runningAt, endedAt time.Duration) {
	c.ep.tasks.observe(taskType, runningAt, endedAt, c.pollInit)
}

// ListTasks implements Client.
func (c *PVEClient) ListTasks(ctx context.Context, node string, f TaskFilter) ([]TaskState, error) {
	var out []TaskState
	err := c.run(ctx, "ListTasks", func(ctx context.Context) error {
		q := url.Values{}
		if f.Type != "" {
			q.Set("typefilter", f.Type)
		}
		if f.VMID != 0 {
			q.Set("vmid", strconv.Itoa(f.VMID))
		}
		user := f.User
		if user == "me" {
			user = c.tokenID
		}
		// PVE lists a token's tasks with user "user@realm" and tokenid "name", and
		// matches userfilter (as a substring) against the user only.
		wantUser, wantToken, _ := strings.Cut(user, "!")
		if wantUser != "" {
			q.Set("userfilter", wantUser)
		}
		if f.Source != "" {
			q.Set("source", f.Source)
		}
		if f.Limit > 0 {
			q.Set("limit", strconv.Itoa(f.Limit))
		}
		var ws []wireTaskListEntry
		if err := c.do(ctx, http.MethodGet, "/nodes/"+url.PathEscape(node)+"/tasks", q, nil, &ws); err != nil {
			return fmt.Errorf("list tasks of node %s: %w", node, err)
		}
		out = make([]TaskState, 0, len(ws))
		for _, w := range ws {
			t := taskFromList(w, node)
			// userfilter is a substring match on the user: keep exact matches of
			// user and token only, so "capi" never matches "capi2".
			tu, tt, _ := strings.Cut(t.User, "!")
			if wantUser != "" && (!strings.EqualFold(tu, wantUser) || tt != wantToken) {
				continue
			}
			out = append(out, t)
		}
		return nil
	})
	return out, err
}

func unixTime(s int64) time.Time {
	if s <= 0 {
		return time.Time{}
	}
	return time.Unix(s, 0)
}

// StartCreateVM implements Client.
func (c *PVEClient) StartCreateVM(ctx context.Context, spec VMSpec) (string, error) {
	if err := spec.Validate(); err != nil {
		c.metrics.observeOperation("StartCreateVM", err, 0)
		return "", err
	}
	var upid string
	err := c.run(ctx, "StartCreateVM", func(ctx context.Context) error {
		// At most MaxTasksPerNode creates per node: more only queue on PVE's storage
		// lock, and those that wait past its timeout fail ("can't lock file").
		if !c.limiter.reserveCreate(spec.Node, c.nowFn()) {
			return fmt.Errorf("create VM %d (%s) on %s: %d creates of this manager are running there: %w",
				spec.VMID, spec.Name, spec.Node, c.limiter.Limits().MaxTasksPerNode, ErrNodeBusy)
		}
		// Never idempotent at the HTTP level: a retried POST after a lost answer
		// would find the VMID taken by its own first attempt. The caller decides
		// from the VM's config and the node's tasks what happened.
		err := c.do(ctx, http.MethodPost, "/nodes/"+url.PathEscape(spec.Node)+"/qemu", nil, spec.Params(), &upid)
		c.limiter.createSent(spec.Node, upid, c.nowFn().Add(c.cfg.TaskTimeout))
		if err != nil {
			if errors.Is(err, ErrAlreadyExists) {
				c.markVMIDTaken(spec.VMID)
			}
			return fmt.Errorf("create VM %d (%s) on %s: %w", spec.VMID, spec.Name, spec.Node, err)
		}
		if upid == "" {
			return fmt.Errorf("create VM %d (%s) on %s: proxmox returned no task id", spec.VMID, spec.Name, spec.Node)
		}
		return nil
	})
	return upid, err
}

// StartShutdownVM implements Client.
func (c *PVEClient) StartShutdownVM(ctx context.Context, node string, vmid int, timeout time.Duration, forceStop bool) (string, error) {
	if timeout <= 0 {
		timeout = 3 * time.Minute
	}
	body := map[string]any{"timeout": int(timeout.Seconds()), "forceStop": 0}
	if forceStop {
		body["forceStop"] = 1
	}
	return c.startVMTask(ctx, "StartShutdownVM", "shut down", http.MethodPost, vmPath(node, vmid)+"/status/shutdown", nil, body, node, vmid)
}

// StartStopVM implements Client.
func (c *PVEClient) StartStopVM(ctx context.Context, node string, vmid int) (string, error) {
	return c.startVMTask(ctx, "StartStopVM", "stop", http.MethodPost, vmPath(node, vmid)+"/status/stop", nil, nil, node, vmid)
}

// StartDeleteVM implements Client.
func (c *PVEClient) StartDeleteVM(ctx context.Context, node string, vmid int) (string, error) {
	q := url.Values{"purge": {"1"}, "destroy-unreferenced-disks": {"1"}}
	return c.startVMTask(ctx, "StartDeleteVM", "destroy", http.MethodDelete, vmPath(node, vmid), q, nil, node, vmid)
}

func (c *PVEClient) startVMTask(ctx context.Context, op, verb, method, path string, q url.Values, body map[string]any, node string, vmid int) (string, error) {
	var upid string
	err := c.run(ctx, op, func(ctx context.Context) error {
		if err := c.do(ctx, method, path, q, body, &upid); err != nil {
			return fmt.Errorf("%s VM %d on %s: %w", verb, vmid, node, err)
		}
		return nil
	})
	return upid, err
}

type wireTaskListEntry struct {
	UPID      string  `json:"upid"`
	Node      string  `json:"node"`
	Type      string  `json:"type"`
	ID        string  `json:"id"`
	User      string  `json:"user"`
	TokenID   string  `json:"tokenid"`
	Status    string  `json:"status"`
	StartTime flexInt `json:"starttime"`
	EndTime   flexInt `json:"endtime"`
}
