package pvesim

import (
	"regexp"
	"sort"
	"strings"
)

var reWarnings = regexp.MustCompile(`^WARNINGS: \d+$`)

// taskStatusType is PVE::Tools::upid_normalize_status_type.
func taskStatusType(status string) string {
	switch {
	case status == "":
		return "unknown"
	case status == "OK":
		return "ok"
	case reWarnings.MatchString(status):
		return "warning"
	}
	return "error"
}

// hTaskList is pve-manager's PVE::API2::Tasks node_tasks: finished tasks
// (source=archive, the default) newest first, running ones only with
// source=active|all (status "RUNNING"). Token tasks are split into user and
// tokenid ($convert_token_task); callers without Sys.Audit on the node see
// only their own tasks. The list comes from the node's task files, which the
// forking daemon updates when it reaps a task: an unreaped task is listed
// running after it ended (its own status, which checks the process, is exact).
func hTaskList(c *reqCtx) (any, *apiError) {
	s := c.s
	node := c.node()
	start := 0
	if _, ok := c.params["start"]; ok {
		start = c.intParam("start")
	}
	limit := 50
	if _, ok := c.params["limit"]; ok {
		limit = c.intParam("limit")
	}
	source := c.params["source"]
	if source == "" {
		source = "archive"
	}
	statusFilter := map[string]bool{"ok": true, "warning": true, "error": true, "unknown": true}
	errorsOnly := c.boolParam("errors")
	if sf, ok := c.params["statusfilter"]; ok && !errorsOnly {
		statusFilter = map[string]bool{}
		for _, f := range splitList(sf) {
			statusFilter[strings.ToLower(f)] = true
		}
	} else if errorsOnly {
		statusFilter["ok"] = false
	}
	auditor := c.has("/nodes/"+node, "Sys.Audit")
	userfilter := strings.ToLower(c.params["userfilter"])
	_, hasSince := c.params["since"]
	_, hasUntil := c.params["until"]
	since, until := int64(c.intParam("since")), int64(c.intParam("until"))

	s.mu.Lock()
	active, archive := s.tasksOn(node)
	// The active file lists tasks in start order; the index is read
	// backwards, newest end first.
	sort.Slice(active, func(i, j int) bool { return active[i].pid < active[j].pid })
	sort.Slice(archive, func(i, j int) bool {
		if archive[i].endtime != archive[j].endtime {
			return archive[i].endtime > archive[j].endtime
		}
		return archive[i].pid > archive[j].pid
	})
	count := 0
	out := []map[string]any{}
	filter := func(t *task, status string) bool {
		user, tokenid := splitTokenUser(t.user)
		if userfilter != "" && !strings.Contains(strings.ToLower(user), userfilter) {
			return true
		}
		if !auditor && t.user != c.token {
			return true
		}
		if tf := c.params["typefilter"]; tf != "" && t.typ != tf {
			return true
		}
		if vmid := c.params["vmid"]; vmid != "" && t.id != vmid {
			return true
		}
		if hasSince && t.starttime < since {
			return true
		}
		if hasUntil && t.starttime > until {
			return true
		}
		if !statusFilter[taskStatusType(status)] {
			return true
		}
		_ = tokenid
		count++
		if count <= start {
			return true
		}
		return len(out) >= limit
	}
	entry := func(t *task, status string) map[string]any {
		user, tokenid := splitTokenUser(t.user)
		e := map[string]any{"upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart, "starttime": t.starttime,
			"type": t.typ, "id": t.id, "user": user, "status": status}
		if tokenid != "" {
			e["tokenid"] = tokenid
		}
		if !t.running && !t.unreaped {
			e["endtime"] = t.endtime
		}
		return e
	}
	if source == "active" || source == "all" {
		for _, t := range active {
			// An active task has no status yet: it is "unknown" to the
			// filter and listed as RUNNING.
			if !filter(t, "") {
				out = append(out, entry(t, "RUNNING"))
			}
		}
	}
	if source != "active" {
		for _, t := range archive {
			if !filter(t, t.exitstatus) {
				out = append(out, entry(t, t.exitstatus))
			}
		}
	}
	s.mu.Unlock()
	return out, nil
}

// splitTokenUser splits "user@realm!token" like $convert_token_task.
func splitTokenUser(u string) (string, string) {
	if i := strings.LastIndex(u, "!"); i > 0 {
		return u[:i], u[i+1:]
	}
	return u, ""
}

// maxFinishedListed is PVE::RESTEnvironment active_workers' MAX_FINISHED: the active file,
// which each node broadcasts, keeps its running tasks and as many of the most recent
// finished ones as make 25 entries.
const maxFinishedListed = 25

// hClusterTasks is pve-manager's PVE::API2::Cluster tasks: PVE::Cluster::get_tasklist, the
// task lists every online node broadcast (PVE::RESTEnvironment active_workers →
// broadcast_tasklist, on every task start and reap): its running tasks (an unreaped one
// among them) and its most recent finished ones up to maxFinishedListed entries. Token
// tasks are split into user and tokenid, and then a caller without Sys.Audit on "/" sees
// the tasks whose user is its own user id, which for a token (whose id names the token)
// is none.
func hClusterTasks(c *reqCtx) (any, *apiError) {
	s := c.s
	all := c.has("/", "Sys.Audit")
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for _, node := range s.nodeOrder {
		if n := s.nodes[node]; n == nil || !n.online {
			continue
		}
		running, finished := s.tasksOn(node)
		sort.Slice(running, func(i, j int) bool { return running[i].pid < running[j].pid })
		sort.Slice(finished, func(i, j int) bool {
			if finished[i].starttime != finished[j].starttime {
				return finished[i].starttime > finished[j].starttime
			}
			return finished[i].pid > finished[j].pid
		})
		if keep := max(maxFinishedListed-len(running), 0); len(finished) > keep {
			finished = finished[:keep]
		}
		for _, t := range append(running, finished...) {
			user, tokenid := splitTokenUser(t.user)
			if !all && user != c.token {
				continue
			}
			e := map[string]any{"upid": t.upid, "node": t.node, "starttime": t.starttime, "type": t.typ, "id": t.id, "user": user}
			if tokenid != "" {
				e["tokenid"] = tokenid
			}
			if t.running || t.unreaped {
				e["pid"] = t.pid
			} else {
				e["status"] = t.exitstatus
				e["endtime"] = t.endtime
				e["saved"] = "1"
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// tasksOn splits node's tasks as its task files do: active (running, or ended but not yet
// reaped) and finished. Callers hold s.mu.
func (s *Server) tasksOn(node string) (active, finished []*task) {
	for _, t := range s.tasks {
		if t.node != node {
			continue
		}
		if t.running || t.unreaped {
			active = append(active, t)
		} else {
			finished = append(finished, t)
		}
	}
	return active, finished
}
