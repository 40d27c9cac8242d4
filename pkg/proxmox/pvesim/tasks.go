package pvesim

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// task is one PVE worker task (qmcreate, qmstart, download, ...).
type task struct {
	upid      string
	node      string
	typ       string
	id        string
	user      string
	pid       int
	pstart    int
	starttime int64
	endtime   int64
	running   bool
	// unreaped: ended, but the daemon that forked it has not updated the node's task
	// files (PVE::RESTEnvironment worker_reaper → active_workers): the node's task list
	// shows it running until the next task starts on the node.
	unreaped   bool
	exitstatus string
	log        []string
	stopReq    bool
	// warnings counts warn() lines; a task that succeeds with warnings
	// ends "WARNINGS: <n>" (PVE::RESTEnvironment fork_worker).
	warnings int
}

// taskSpec describes the work of a task: locks held while it runs (e.g.
// "/var/lock/qemu-server/lock-100.conf"), and run, the effect applied at the
// end (an error string becomes the exitstatus).
type taskSpec struct {
	node  string
	typ   string
	id    string
	user  string
	locks []string
	// routeKey selects per-endpoint task faults ("METHOD /template").
	routeKey string
	// run applies the effect after the task duration; returned log lines are
	// appended. It is called without s.mu held.
	run func(t *task) error
	// onFail cleans up when the task fails before or during run.
	onFail func()
	// duration overrides Config.TaskDuration as the time the worker needs
	// before run (0: TaskDuration).
	duration time.Duration
}

func (s *Server) newUPID(node, typ, id, user string) *task {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pid++
	now := time.Now().Unix()
	// fork_worker calls active_workers, which checks every listed task's process and
	// records the ended ones: tasks nobody reaped show their end from now on.
	for _, t := range s.tasks {
		if t.node == node {
			t.unreaped = false
		}
	}
	t := &task{node: node, typ: typ, id: id, user: user, pid: s.pid, pstart: 0x10000 + s.pid*7,
		starttime: now, running: true}
	t.upid = fmt.Sprintf("UPID:%s:%08X:%08X:%08X:%s:%s:%s:", node, t.pid, t.pstart, now, typ, id, user)
	s.tasks[t.upid] = t
	return t
}

// startTask registers a running task and runs it in the background: take
// locks (failing like PVE on timeout), wait the configured duration, apply
// faults, run the effect, release locks.
func (s *Server) startTask(spec taskSpec) string {
	t := s.newUPID(spec.node, spec.typ, spec.id, spec.user)
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		err := s.execTask(t, spec)
		if err != nil && spec.onFail != nil {
			spec.onFail()
		}
		s.mu.Lock()
		t.running = false
		t.endtime = time.Now().Unix()
		t.unreaped = s.unreapedFault(spec.routeKey, t.node)
		if err != nil {
			// RESTEnvironment::fork_worker: chomp, newlines become spaces,
			// then "TASK ERROR: <msg>" is the log's last line.
			msg := strings.ReplaceAll(strings.TrimSuffix(err.Error(), "\n"), "\n", " ")
			t.log = append(t.log, "TASK ERROR: "+msg)
		} else if t.warnings > 0 {
			t.exitstatus = fmt.Sprintf("WARNINGS: %d", t.warnings)
			t.log = append(t.log, "TASK "+t.exitstatus)
		} else {
			t.log = append(t.log, "TASK OK")
		}
		t.exitstatus = readStatus(t.log)
		s.mu.Unlock()
	}()
	return t.upid
}

func (s *Server) execTask(t *task, spec taskSpec) error {
	def := ""
	if len(spec.locks) > 0 {
		def = spec.locks[0]
	}
	if f := s.lockFault(spec.routeKey, spec.node, def); f != "" {
		return fmt.Errorf("%s", lockTimeoutText(f))
	}
	release, err := s.acquireLocks(spec.locks, t.upid)
	if err != nil {
		return err
	}
	defer release()
	d := spec.duration
	if d == 0 {
		d = time.Duration(s.cfg.TaskDuration)
	}
	s.sleep(d)
	s.mu.Lock()
	stopped := t.stopReq
	s.mu.Unlock()
	if stopped {
		return fmt.Errorf("unexpected status")
	}
	if msg := s.taskFault(spec.routeKey, spec.node); msg != "" {
		return fmt.Errorf("%s", msg)
	}
	if spec.run == nil {
		return nil
	}
	return spec.run(t)
}

// readStatus derives a finished task's exit status from the last line of its
// log, like PVE::Tools::upid_read_status: "TASK OK" → OK, "TASK ERROR: x" →
// x, "TASK WARNINGS: n" → "WARNINGS: n", anything else → "unexpected status".
func readStatus(log []string) string {
	if len(log) == 0 {
		return "unable to read tail (got 0 bytes)"
	}
	line := log[len(log)-1]
	switch {
	case line == "TASK OK":
		return "OK"
	case strings.HasPrefix(line, "TASK ERROR: "):
		return strings.TrimPrefix(line, "TASK ERROR: ")
	case strings.HasPrefix(line, "TASK WARNINGS: "):
		return strings.TrimPrefix(line, "TASK ")
	}
	return "unexpected status"
}

// awaitTask is the API's optional wait for a worker it just forked (pve-storage's
// DELETE .../content/{volume} `delay`, qemu-server's POST .../config `background_delay`):
// check the worker, and while it runs sleep one (Proxmox) second, for at most delay
// seconds. ended reports whether it finished within them, with its exit status.
func (s *Server) awaitTask(upid string, delay int) (ended bool, status string) {
	end := time.Now().Add(s.cfg.scale(time.Duration(delay) * time.Second))
	for {
		s.mu.Lock()
		t := s.tasks[upid]
		running, exit := t.running, t.exitstatus
		s.mu.Unlock()
		if !running {
			return true, exit
		}
		if !time.Now().Before(end) {
			return false, ""
		}
		s.sleep(s.cfg.scale(time.Second))
	}
}

// statusIsError is PVE::Tools::upid_status_is_error: anything but OK and WARNINGS.
func statusIsError(status string) bool {
	return status != "OK" && !strings.HasPrefix(status, "WARNINGS: ")
}

// logf appends a line to a task log.
func (s *Server) logf(t *task, format string, args ...any) {
	s.mu.Lock()
	t.log = append(t.log, fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

// reUPID is PVE::Tools::upid_decode's format.
var reUPID = regexp.MustCompile(`^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s]+):([^:\s]*):([^:\s]+):$`)

func vmLock(vmid int) string { return fmt.Sprintf("/var/lock/qemu-server/lock-%d.conf", vmid) }

func storageLock(id string) string { return "/var/lock/pve-manager/pve-storage-" + id }

func lockTimeoutText(path string) string {
	return fmt.Sprintf("can't lock file '%s' - got timeout", path)
}

// sleep waits d of wall-clock time, or until Close.
func (s *Server) sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	select {
	case <-time.After(d):
	case <-s.closing:
	}
}

// releaseLocks drops the given locks early if owner still holds them (a
// worker gives up a storage lock once its volumes are allocated).
func (s *Server) releaseLocks(paths []string, owner string) {
	s.lockMu.Lock()
	for _, p := range paths {
		if s.locks[p] == owner {
			delete(s.locks, p)
		}
	}
	s.lockMu.Unlock()
}

// acquireLocks takes all locks or none for owner, waiting up to
// LockTimeout.
func (s *Server) acquireLocks(paths []string, owner string) (func(), error) {
	deadline := time.Now().Add(time.Duration(s.cfg.LockTimeout))
	for {
		s.lockMu.Lock()
		busy := ""
		for _, p := range paths {
			if _, held := s.locks[p]; held {
				busy = p
				break
			}
		}
		if busy == "" {
			for _, p := range paths {
				s.locks[p] = owner
			}
			s.lockMu.Unlock()
			return func() { s.releaseLocks(paths, owner) }, nil
		}
		s.lockMu.Unlock()
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%s", lockTimeoutText(busy))
		}
		time.Sleep(time.Millisecond)
	}
}

// withLocks runs a synchronous operation under locks; failures are PVE's
// 500 "can't lock file ..." error.
func (s *Server) withLocks(routeKey, node string, paths []string, fn func() *apiError) *apiError {
	def := ""
	if len(paths) > 0 {
		def = paths[0]
	}
	if f := s.lockFault(routeKey, node, def); f != "" {
		return errServer("%s", lockTimeoutText(f))
	}
	s.mu.Lock()
	s.pid++
	owner := fmt.Sprintf("sync:%d", s.pid)
	s.mu.Unlock()
	release, err := s.acquireLocks(paths, owner)
	if err != nil {
		return errServer("%s", err.Error())
	}
	defer release()
	return fn()
}

// WaitTasks blocks until no task is running (test helper).
func (s *Server) WaitTasks(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		n := 0
		for _, t := range s.tasks {
			if t.running {
				n++
			}
		}
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pvesim: %d tasks still running after %s", n, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// TaskInfo is a finished or running task (test helper view).
type TaskInfo struct {
	UPID, Node, Type, ID, User string
	Running                    bool
	ExitStatus                 string
	Log                        []string
}

// Tasks lists all tasks in creation order of their PIDs.
func (s *Server) Tasks() []TaskInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TaskInfo, 0, len(s.tasks))
	for _, t := range s.tasks {
		out = append(out, TaskInfo{UPID: t.upid, Node: t.node, Type: t.typ, ID: t.id, User: t.user,
			Running: t.running, ExitStatus: t.exitstatus, Log: append([]string(nil), t.log...)})
	}
	sortTasks(out)
	return out
}

func sortTasks(ts []TaskInfo) {
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].UPID < ts[j-1].UPID; j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
}

func hTaskStatus(c *reqCtx) (any, *apiError) {
	t, e := c.findTask("Sys.Audit")
	if e != nil {
		return nil, e
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	out := map[string]any{"upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
		"starttime": t.starttime, "type": t.typ, "id": t.id, "user": t.user, "status": "running"}
	if !t.running {
		out["status"] = "stopped"
		out["exitstatus"] = t.exitstatus
		out["endtime"] = t.endtime
	}
	return out, nil
}

func hTaskLog(c *reqCtx) (any, *apiError) {
	t, e := c.findTask("Sys.Audit")
	if e != nil {
		return nil, e
	}
	start, limit := 0, 50
	if _, ok := c.params["start"]; ok {
		start = c.intParam("start")
	}
	if _, ok := c.params["limit"]; ok {
		limit = c.intParam("limit")
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	out := []map[string]any{}
	for i := start; i < len(t.log) && len(out) < limit; i++ {
		out = append(out, map[string]any{"n": i + 1, "t": t.log[i]})
	}
	return out, nil
}

func hTaskStop(c *reqCtx) (any, *apiError) {
	t, e := c.findTask("Sys.Modify")
	if e != nil {
		return nil, e
	}
	c.s.mu.Lock()
	t.stopReq = true
	c.s.mu.Unlock()
	return nil, nil
}

// findTask resolves {upid}; non-owners need priv on /nodes/{node}.
func (c *reqCtx) findTask(priv string) (*task, *apiError) {
	upid := c.params["upid"]
	c.s.mu.Lock()
	t, ok := c.s.tasks[upid]
	c.s.mu.Unlock()
	// pve-manager Tasks.pm: raise_param_exc({ upid => ... }) for both.
	if !reUPID.MatchString(upid) {
		return nil, errParam("upid", "unable to parse worker upid")
	}
	if !ok || t.node != c.node() {
		return nil, errParam("upid", "no such task")
	}
	if t.user != c.token {
		if e := c.checkAll("/nodes/"+t.node, priv); e != nil {
			return nil, e
		}
	}
	return t, nil
}
