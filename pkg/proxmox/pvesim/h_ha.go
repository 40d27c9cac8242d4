package pvesim

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// haResource is one entry of /etc/pve/ha/resources.cfg.
type haResource struct {
	vmid    int
	state   string // requested: started, stopped, disabled, ignored
	comment string
	group   string
	// maxRestart, maxRelocate and failback are stored as given.
	maxRestart, maxRelocate string
	failback                string
}

func (h *haResource) sid() string { return fmt.Sprintf("vm:%d", h.vmid) }

// haCRMDelay is the time between a request to the HA stack (ha-manager set,
// crm-command) and the LRM's worker acting on it: the CRM and LRM loops run
// every 10 s on Proxmox VE.
const haCRMDelay = 10 * time.Second

// parseSID is PVE::HA::Config::parse_sid for VMs: "vm:100" or "100".
func parseSID(sid string) (int, *apiError) {
	name := sid
	if t, n, ok := strings.Cut(sid, ":"); ok {
		if t != "vm" {
			return 0, errServer("pvesim models HA for VMs only (got '%s')", sid)
		}
		name = n
	}
	id, err := strconv.Atoi(name)
	if err != nil || id < 100 {
		return 0, errParam("sid", "unable to parse service id '%s'", sid)
	}
	return id, nil
}

// haManaged reports whether the VM is an HA resource that the HA stack acts
// on (PVE::HA::Config::vm_is_ha_managed: state not "ignored"). Callers hold
// s.mu.
func (s *Server) haManaged(vmid int) *haResource {
	h := s.ha[vmid]
	if h == nil || h.state == "ignored" {
		return nil
	}
	return h
}

func (s *Server) haEntry(h *haResource) map[string]any {
	e := map[string]any{"sid": h.sid(), "type": "vm", "state": h.state, "digest": s.haDigest()}
	if h.comment != "" {
		e["comment"] = h.comment
	}
	if h.group != "" {
		e["group"] = h.group
	}
	for k, v := range map[string]string{"max_restart": h.maxRestart, "max_relocate": h.maxRelocate, "failback": h.failback} {
		if v != "" {
			n, _ := strconv.Atoi(v)
			e[k] = n
		}
	}
	return e
}

// haDigest is the digest of resources.cfg. Callers hold s.mu.
func (s *Server) haDigest() string {
	h := sha1.New()
	for _, id := range sortedHAIDs(s.ha) {
		r := s.ha[id]
		fmt.Fprintf(h, "vm: %d\n\tstate %s\n\tcomment %s\n\tgroup %s\n", id, r.state, r.comment, r.group)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sortedHAIDs(m map[int]*haResource) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids
}

func hHAList(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	if t := c.params["type"]; t == "ct" {
		return out, nil
	}
	for _, id := range sortedHAIDs(s.ha) {
		out = append(out, s.haEntry(s.ha[id]))
	}
	return out, nil
}

func hHAGet(c *reqCtx) (any, *apiError) {
	s := c.s
	id, e := parseSID(c.params["sid"])
	if e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.ha[id]
	if !ok {
		return nil, errServer("no such resource 'vm:%d'", id)
	}
	return s.haEntry(h), nil
}

// hHACreate is pve-ha-manager's PVE::API2::HA::Resources create: the VM must
// exist, the sid must be new; the CRM then drives the VM to the requested
// state (default "started").
func hHACreate(c *reqCtx) (any, *apiError) {
	s := c.s
	id, e := parseSID(c.params["sid"])
	if e != nil {
		return nil, e
	}
	if t := c.params["type"]; t != "" && t != "vm" {
		return nil, errServer("types does not match")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.vms[id]; !ok {
		return nil, errServer("resource 'vm:%d' does not exist in cluster", id)
	}
	if _, dup := s.ha[id]; dup {
		return nil, errServer("resource ID 'vm:%d' already defined", id)
	}
	h := &haResource{vmid: id, state: c.params["state"], comment: c.params["comment"], group: c.params["group"],
		maxRestart: c.params["max_restart"], maxRelocate: c.params["max_relocate"], failback: c.params["failback"]}
	if h.state == "" || h.state == "enabled" {
		h.state = "started"
	}
	s.ha[id] = h
	s.haKick(id)
	return nil, nil
}

func hHADelete(c *reqCtx) (any, *apiError) {
	s := c.s
	id, e := parseSID(c.params["sid"])
	if e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ha[id]; !ok {
		return nil, errServer("cannot delete service 'vm:%d', not HA managed!", id)
	}
	delete(s.ha, id)
	return nil, nil
}

// haKick schedules the simulated CRM/LRM to bring the VM to its requested
// state after the HA loop delay. Callers hold s.mu.
func (s *Server) haKick(vmid int) {
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		s.sleep(s.cfg.scale(haCRMDelay))
		select {
		case <-s.closing:
			return
		default:
		}
		s.mu.Lock()
		h, vm := s.haManaged(vmid), s.vms[vmid]
		if h == nil || vm == nil || !s.nodes[vm.node].online {
			s.mu.Unlock()
			return
		}
		want := h.state == "started"
		running := vm.running
		node := vm.node
		s.mu.Unlock()
		switch {
		case want && !running:
			// The LRM runs the same worker as qm start, as root@pam.
			s.startTask(taskSpec{node: node, typ: "qmstart", id: strconv.Itoa(vmid), user: "root@pam",
				locks: []string{vmLock(vmid)}, routeKey: "POST /nodes/{node}/qemu/{vmid}/status/start",
				run: func(t *task) error { return s.powerOn(t, vm) }})
		case !want && running:
			s.startTask(taskSpec{node: node, typ: "qmshutdown", id: strconv.Itoa(vmid), user: "root@pam",
				locks: []string{vmLock(vmid)}, routeKey: "POST /nodes/{node}/qemu/{vmid}/status/shutdown",
				run: func(t *task) error { return s.powerOff(t, vm, haStop) }})
		}
	}()
}

// haStop is how the LRM stops a service: a shutdown with forceStop after
// the (default 60 s) timeout.
var haStop = stopOpts{shutdown: true, force: true}

// haRequest is the worker qemu-server forks for an HA-managed VM instead of
// acting itself (hastart/hastop: "ha-manager set vm:<id> --state ..."). The
// task ends OK before the VM changes state; the CRM acts later.
func (c *reqCtx) haRequest(typ, state, what string, vmid int) (any, *apiError) {
	s := c.s
	return s.startTask(taskSpec{node: c.node(), typ: typ, id: strconv.Itoa(vmid), user: c.token,
		run: func(t *task) error {
			s.logf(t, "Requesting HA %s for VM %d", what, vmid)
			s.mu.Lock()
			defer s.mu.Unlock()
			h := s.ha[vmid]
			if h == nil {
				return fmt.Errorf("service 'vm:%d' is not configured", vmid)
			}
			h.state = state
			s.haKick(vmid)
			return nil
		}}), nil
}

// hMigrate is qemu-server's migrate_vm: request-time checks (target is
// another cluster node, a running VM needs online=1, local disks of a running
// VM need with-local-disks), then either an HA migration request (hamigrate)
// or a qmigrate worker that locks the config with "lock: migrate", moves
// local disks and leaves the VM on the target.
func hMigrate(c *reqCtx) (any, *apiError) {
	s := c.s
	target := c.params["target"]
	if target == c.node() {
		return nil, errParam("target", "target is local node.")
	}
	s.mu.Lock()
	vm, e := c.loadVM()
	if e != nil {
		s.mu.Unlock()
		return nil, e
	}
	if _, ok := s.nodes[target]; !ok {
		s.mu.Unlock()
		return nil, errServer("no such cluster node '%s'", target)
	}
	if vm.running && !c.boolParam("online") {
		s.mu.Unlock()
		return nil, errServer("can't migrate running VM without --online")
	}
	if vm.running && !c.boolParam("with-local-disks") && len(s.localDisks(vm)) > 0 {
		s.mu.Unlock()
		return nil, errServer("can't live migrate attached local disks without with-local-disks option")
	}
	ha := s.haManaged(vm.vmid) != nil
	s.mu.Unlock()
	if ha {
		vmid := vm.vmid
		return s.startTask(taskSpec{node: c.node(), typ: "hamigrate", id: strconv.Itoa(vmid), user: c.token,
			run: func(t *task) error {
				s.logf(t, "Requesting HA migration for VM %d to node %s", vmid, target)
				s.haMigrateLater(vmid, target)
				return nil
			}}), nil
	}
	return s.startMigrate(vm, target, c.token), nil
}

// localDisks lists the VM's disk volumes on non-shared storage. Callers
// hold s.mu.
func (s *Server) localDisks(vm *vmState) []*volume {
	var out []*volume
	for k, val := range vm.conf {
		if !isDriveKey(k) || strings.Contains(val, "media=cdrom") {
			continue
		}
		v, st := s.findVolume(parsePropString(val, "file")["file"], vm.node)
		if v != nil && !st.cfg.Shared {
			out = append(out, v)
		}
	}
	return out
}

// startMigrate runs PVE::QemuMigrate as a qmigrate worker on the VM's node.
func (s *Server) startMigrate(vm *vmState, target, user string) string {
	s.mu.Lock()
	source, vmid := vm.node, vm.vmid
	// Transfer time: the used data of local disks (what an import wrote)
	// and, for a live migration, the guest's resident memory.
	var bytes uint64
	for _, v := range s.localDisks(vm) {
		if v.source != "" {
			bytes += v.size
		}
	}
	if vm.running {
		bytes += s.vmRSS(vm, time.Now())
	}
	s.mu.Unlock()
	return s.startTask(taskSpec{node: source, typ: "qmigrate", id: strconv.Itoa(vmid), user: user,
		locks: []string{vmLock(vmid)}, routeKey: "POST /nodes/{node}/qemu/{vmid}/migrate",
		run: func(t *task) error {
			begin := time.Now()
			aborted := func(err string) error {
				return fmt.Errorf("migration aborted (duration %s): %s", pveDuration(time.Since(begin)), err)
			}
			s.mu.Lock()
			if s.vms[vmid] != vm || vm.node != source {
				s.mu.Unlock()
				return aborted(fmt.Sprintf("Configuration file 'nodes/%s/qemu-server/%d.conf' does not exist", source, vmid))
			}
			if l := vm.conf["lock"]; l != "" {
				s.mu.Unlock()
				return fmt.Errorf("VM is locked (%s)", l)
			}
			if !s.nodes[target].online {
				s.mu.Unlock()
				return aborted("Can't connect to destination address using public key")
			}
			for _, v := range s.localDisks(vm) {
				if _, e := s.storageOn(v.storage, target); e != nil {
					s.mu.Unlock()
					return aborted(e.msg)
				}
			}
			vm.conf["lock"] = "migrate"
			online := vm.running
			t.log = append(t.log, fmt.Sprintf("starting migration of VM %d to node '%s'", vmid, target))
			s.mu.Unlock()

			// At least one more task round (ssh tunnel, config move) plus
			// the data transfer.
			s.sleep(time.Duration(s.cfg.TaskDuration) + s.cfg.importDuration(bytes))

			s.mu.Lock()
			for _, v := range s.localDisks(vm) {
				st := s.storages[v.storage]
				s.removeVolume(v)
				s.addVolume(st, target, v)
				t.log = append(t.log, fmt.Sprintf("volume '%s' is '%s' on the target", v.volid, v.volid))
			}
			vm.node = target
			delete(vm.conf, "lock")
			if online {
				s.pid++
				vm.pid = s.pid
			}
			t.log = append(t.log, fmt.Sprintf("migration finished successfully (duration %s)", pveDuration(time.Since(begin))))
			s.mu.Unlock()
			return nil
		},
		onFail: func() {
			s.mu.Lock()
			if vm.conf["lock"] == "migrate" {
				delete(vm.conf, "lock")
			}
			s.mu.Unlock()
		}})
}

// pveDuration renders HH:MM:SS like PVE's migration log.
func pveDuration(d time.Duration) string {
	sec := int(d.Seconds())
	return fmt.Sprintf("%02d:%02d:%02d", sec/3600, sec/60%60, sec%60)
}

// haMigrateLater lets the CRM migrate an HA VM after its loop delay: online
// if running, offline otherwise (the LRM's migrate worker).
func (s *Server) haMigrateLater(vmid int, target string) {
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		s.sleep(s.cfg.scale(haCRMDelay))
		s.mu.Lock()
		vm := s.vms[vmid]
		s.mu.Unlock()
		if vm == nil {
			return
		}
		s.startMigrate(vm, target, "root@pam")
	}()
}

// RelocateHA relocates an HA-managed VM to target as the HA stack does
// (ha-manager relocate, or the CRM recovering a service): after the CRM
// delay the LRM stops the VM on its node, moves it and starts it on target
// if its requested state is "started". It returns at once; the VM moves
// asynchronously, as on Proxmox VE.
func (s *Server) RelocateHA(vmid int, target string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, vm := s.haManaged(vmid), s.vms[vmid]
	if h == nil || vm == nil {
		return fmt.Errorf("pvesim: VM %d is not HA managed", vmid)
	}
	if _, ok := s.nodes[target]; !ok || target == vm.node {
		return fmt.Errorf("pvesim: cannot relocate VM %d to %q", vmid, target)
	}
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		s.sleep(s.cfg.scale(haCRMDelay))
		s.mu.Lock()
		source := vm.node
		running := vm.running
		s.mu.Unlock()
		if running {
			upid := s.startTask(taskSpec{node: source, typ: "qmshutdown", id: strconv.Itoa(vmid), user: "root@pam",
				locks: []string{vmLock(vmid)}, run: func(t *task) error { return s.powerOff(t, vm, haStop) }})
			if st := s.waitTask(upid); st != "OK" && !strings.HasPrefix(st, "WARNINGS") {
				return
			}
		}
		if s.waitTask(s.startMigrate(vm, target, "root@pam")) != "OK" {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if h := s.haManaged(vmid); h != nil && h.state == "started" {
			s.haKick(vmid)
		}
	}()
	return nil
}

// waitTask blocks until a task ends and returns its exit status.
func (s *Server) waitTask(upid string) string {
	for {
		s.mu.Lock()
		t := s.tasks[upid]
		running, status := t.running, t.exitstatus
		s.mu.Unlock()
		if !running {
			return status
		}
		select {
		case <-s.closing:
			return "closing"
		case <-time.After(time.Millisecond):
		}
	}
}
