package pvesim

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

func hVMStatus(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := c.loadVM()
	if e != nil {
		return nil, e
	}
	out := map[string]any{"vmid": v.vmid, "name": v.displayName(), "status": statusText(v), "qmpstatus": statusText(v),
		"cpus": vmCPUs(v), "maxmem": v.memBytes(), "maxdisk": s.vmMaxDisk(v), "mem": 0, "cpu": 0, "disk": 0,
		"uptime": 0, "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0, "ha": map[string]any{"managed": 0}}
	if h := s.ha[v.vmid]; h != nil {
		out["ha"] = map[string]any{"managed": 1, "state": h.state}
	}
	if v.agentEnabled() {
		out["agent"] = 1
	}
	if t := v.conf["tags"]; t != "" {
		out["tags"] = t
	}
	if l := v.conf["lock"]; l != "" {
		out["lock"] = l
	}
	if v.running {
		out["pid"] = v.pid
		out["uptime"] = int64(time.Since(v.startedAt).Seconds())
		out["mem"] = s.vmRSS(v, time.Now())
		out["running-machine"] = "pc-q35-9.2+pve1"
		out["running-qemu"] = "9.2.0"
	}
	return out, nil
}

// hPower serves status/start|stop|shutdown|reboot|reset as tasks holding the
// VM lock.
func hPower(typ string) handlerFunc {
	return func(c *reqCtx) (any, *apiError) {
		s := c.s
		s.mu.Lock()
		vm, e := c.loadVM()
		s.mu.Unlock()
		if e != nil {
			return nil, e
		}
		action := strings.TrimPrefix(typ, "qm")
		node := c.node()
		// qemu-server hands start/stop/shutdown of an HA-managed VM to the
		// HA stack (PVE::HA::Config::vm_is_ha_managed).
		s.mu.Lock()
		ha := s.haManaged(vm.vmid) != nil
		s.mu.Unlock()
		if ha {
			switch typ {
			case "qmstart":
				return c.haRequest("hastart", "started", "start", vm.vmid)
			case "qmstop", "qmshutdown":
				return c.haRequest("hastop", "stopped", "stop", vm.vmid)
			}
		}
		opts := stopOpts{force: c.boolParam("forceStop"), skiplock: c.boolParam("skiplock")}
		if _, ok := c.params["timeout"]; ok {
			opts.timeout = time.Duration(c.intParam("timeout")) * time.Second
		}
		return s.startTask(taskSpec{node: node, typ: typ, id: strconv.Itoa(vm.vmid), user: c.token,
			locks: []string{vmLock(vm.vmid)}, routeKey: "POST /nodes/{node}/qemu/{vmid}/status/" + action,
			run: func(t *task) error {
				switch typ {
				case "qmstart":
					return s.powerOn(t, vm)
				case "qmstop":
					return s.powerOff(t, vm, opts)
				case "qmshutdown":
					opts.shutdown = true
					return s.powerOff(t, vm, opts)
				default: // reboot, reset: the guest goes down and comes back.
					s.mu.Lock()
					running := vm.running
					s.mu.Unlock()
					if !running {
						return fmt.Errorf("VM %d not running", vm.vmid)
					}
					if err := s.powerOff(t, vm, opts); err != nil {
						return err
					}
					return s.powerOn(t, vm)
				}
			}}), nil
	}
}

// powerOn starts the VM if the node has memory for it, then fires hooks.
func (s *Server) powerOn(t *task, vm *vmState) error {
	s.mu.Lock()
	if s.vms[vm.vmid] != vm {
		s.mu.Unlock()
		return fmt.Errorf("Configuration file 'nodes/%s/qemu-server/%d.conf' does not exist", vm.node, vm.vmid)
	}
	if l := vm.conf["lock"]; l != "" {
		s.mu.Unlock()
		return fmt.Errorf("VM is locked (%s)", l)
	}
	if vm.running {
		s.mu.Unlock()
		return fmt.Errorf("VM %d already running", vm.vmid)
	}
	// vm_start activates every volume of the config first
	// (PVE::Storage::activate_volumes): a missing disk or ISO fails the
	// task.
	if err := s.checkVolumes(vm); err != nil {
		s.mu.Unlock()
		return err
	}
	// KVM overcommits: guest RAM is allocated lazily, so a VM starts even
	// when configured memory exceeds what is free. Only an allocation larger
	// than the host's RAM fails (the kernel's overcommit heuristic).
	n := s.nodes[vm.node]
	if vm.memBytes() > n.cfg.Memory {
		t.log = append(t.log, fmt.Sprintf("kvm: cannot set up guest memory 'pc.ram': Cannot allocate memory"))
		s.mu.Unlock()
		return fmt.Errorf("start failed: QEMU exited with code 1")
	}
	vm.running = true
	vm.startedAt = time.Now()
	s.pid++
	vm.pid = s.pid
	ev := s.powerEvent(vm)
	t.log = append(t.log, fmt.Sprintf("VM %d started with PID %d.", vm.vmid, vm.pid))
	s.mu.Unlock()
	s.firePowerOn(ev)
	return nil
}

// checkVolumes fails like activate_volumes for the first volume of the
// config that does not exist on the VM's node. Callers hold s.mu.
func (s *Server) checkVolumes(vm *vmState) error {
	for _, k := range driveKeys() {
		val, ok := vm.conf[k]
		if !ok {
			continue
		}
		file := parsePropString(val, "file")["file"]
		if file == "" || file == "none" || file == "cdrom" || !strings.Contains(file, ":") {
			continue
		}
		if v, _ := s.findVolume(file, vm.node); v != nil {
			continue
		}
		sid, name, _ := strings.Cut(file, ":")
		if st, ok := s.storages[sid]; ok && st.cfg.Type == "lvmthin" {
			return fmt.Errorf("can't activate LV '/dev/pve/%s':   Failed to find logical volume \"pve/%s\"", name, name)
		}
		return fmt.Errorf("volume '%s' does not exist", file)
	}
	return nil
}

// stopOpts are _do_vm_stop's arguments.
type stopOpts struct {
	// shutdown asks the guest (agent guest-shutdown or ACPI powerdown);
	// otherwise QEMU is told to quit.
	shutdown bool
	// timeout is how long to wait for the guest, in Proxmox time (default
	// 60 s like qemu-server).
	timeout time.Duration
	// force kills the VM when the timeout passes (forceStop); without it
	// the task fails with "VM quit/powerdown failed - got timeout".
	force    bool
	skiplock bool
}

// guestShutdownTime is how long a guest that honours the request takes to
// power off after ACPI powerdown or guest-shutdown.
const guestShutdownTime = 5 * time.Second

// powerOff is qemu-server's vm_stop/_do_vm_stop: a VM that is not running
// ends OK at once (before the lock check); a locked VM is refused unless
// skiplock; shutdown goes through the guest agent when it is enabled and
// answers guest-ping, else ACPI; then it waits up to timeout for the guest.
func (s *Server) powerOff(t *task, vm *vmState, o stopOpts) error {
	s.mu.Lock()
	if !vm.running {
		s.mu.Unlock()
		return nil
	}
	if l := vm.conf["lock"]; l != "" && !o.skiplock {
		s.mu.Unlock()
		return fmt.Errorf("VM is locked (%s)", l)
	}
	honours := true
	if o.shutdown {
		agentOK := vm.agentEnabled() && !vm.agentDown
		if vm.agentEnabled() && !agentOK {
			t.warnings++
			t.log = append(t.log, fmt.Sprintf("WARN: QEMU Guest Agent is not running - VM %d qga command 'guest-ping' failed - got timeout", vm.vmid))
		}
		// The agent shuts the guest down itself; ACPI needs the guest to
		// react to the power button.
		honours = agentOK || !vm.ignoresACPI
	}
	s.mu.Unlock()
	if !o.shutdown {
		return s.markStopped(vm)
	}
	timeout := o.timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	if honours && guestShutdownTime <= timeout {
		if s.waitStopped(vm, s.cfg.scale(guestShutdownTime)) {
			return nil
		}
		return s.markStopped(vm)
	}
	if s.waitStopped(vm, s.cfg.scale(timeout)) {
		return nil
	}
	if !o.force {
		return fmt.Errorf("VM quit/powerdown failed - got timeout")
	}
	s.mu.Lock()
	t.warnings++
	t.log = append(t.log, "WARN: VM still running - terminating now with SIGTERM")
	s.mu.Unlock()
	return s.markStopped(vm)
}

// waitStopped waits d for the guest to power off by itself; it reports
// whether it did.
func (s *Server) waitStopped(vm *vmState, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		s.mu.Lock()
		running := vm.running
		s.mu.Unlock()
		if !running {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		select {
		case <-s.closing:
			return false
		case <-time.After(min(time.Millisecond, time.Until(deadline))):
		}
	}
}

// markStopped ends the QEMU process and fires the power-off hooks.
func (s *Server) markStopped(vm *vmState) error {
	s.mu.Lock()
	if !vm.running {
		s.mu.Unlock()
		return nil
	}
	vm.running = false
	vm.pid = 0
	ev := s.powerEvent(vm)
	s.mu.Unlock()
	s.firePowerOff(ev)
	return nil
}

// GuestPowerOff makes a running guest power itself off (poweroff inside the
// VM): QEMU exits, power-off hooks fire, and an HA-managed VM whose
// requested state is "started" is started again by the HA stack.
func (s *Server) GuestPowerOff(vmid int) error {
	s.mu.Lock()
	vm, ok := s.vms[vmid]
	if !ok || !vm.running {
		s.mu.Unlock()
		return fmt.Errorf("pvesim: VM %d is not running", vmid)
	}
	s.mu.Unlock()
	if err := s.markStopped(vm); err != nil {
		return err
	}
	s.mu.Lock()
	if h := s.haManaged(vmid); h != nil && h.state == "started" {
		s.haKick(vmid)
	}
	s.mu.Unlock()
	return nil
}

// SetGuestACPI makes a guest honour (default) or ignore the ACPI power
// button, e.g. a guest that hangs or has no ACPI handling. A shutdown that
// cannot use the guest agent then runs into its timeout.
func (s *Server) SetGuestACPI(vmid int, honours bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vms[vmid]
	if !ok {
		return fmt.Errorf("pvesim: VM %d does not exist", vmid)
	}
	v.ignoresACPI = !honours
	return nil
}

// agentCheck mirrors qemu-server's assert_agent_available. Callers hold
// s.mu.
func agentCheck(v *vmState) *apiError {
	if !v.agentEnabled() {
		return errServer("No QEMU guest agent configured")
	}
	if !v.running {
		return errServer("VM %d is not running", v.vmid)
	}
	if v.agentDown {
		return errServer("QEMU guest agent is not running")
	}
	return nil
}

func (c *reqCtx) agentVM() (*vmState, *apiError) {
	v, e := c.loadVM()
	if e != nil {
		return nil, e
	}
	return v, agentCheck(v)
}

func hAgentPing(c *reqCtx) (any, *apiError) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if _, e := c.agentVM(); e != nil {
		return nil, e
	}
	return map[string]any{"result": map[string]any{}}, nil
}

func hAgentOSInfo(c *reqCtx) (any, *apiError) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if _, e := c.agentVM(); e != nil {
		return nil, e
	}
	return map[string]any{"result": map[string]any{"id": "talos", "name": "Talos", "pretty-name": "Talos (pvesim)",
		"kernel-release": "6.12.0-talos", "kernel-version": "#1 SMP", "machine": "x86_64", "version": "pvesim", "version-id": "pvesim"}}, nil
}

func hAgentIfaces(c *reqCtx) (any, *apiError) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	v, e := c.agentVM()
	if e != nil {
		return nil, e
	}
	ifaces := v.guestIfaces
	if ifaces == nil {
		ifaces = defaultGuestIfaces(v)
	}
	result := []map[string]any{}
	for _, gi := range ifaces {
		addrs := []map[string]any{}
		for _, a := range gi.Addresses {
			typ := "ipv4"
			if strings.Contains(a.IP, ":") {
				typ = "ipv6"
			}
			addrs = append(addrs, map[string]any{"ip-address": a.IP, "ip-address-type": typ, "prefix": a.Prefix})
		}
		e := map[string]any{"name": gi.Name, "ip-addresses": addrs,
			"statistics": map[string]any{"rx-bytes": 0, "rx-packets": 0, "tx-bytes": 0, "tx-packets": 0, "rx-errs": 0, "tx-errs": 0, "rx-dropped": 0, "tx-dropped": 0}}
		if gi.MAC != "" {
			e["hardware-address"] = strings.ToLower(gi.MAC)
		}
		result = append(result, e)
	}
	return map[string]any{"result": result}, nil
}

// defaultGuestIfaces answers with loopback plus one interface per netN and
// the static addresses of ipconfigN ("ip=10.0.0.5/24").
func defaultGuestIfaces(v *vmState) []GuestInterface {
	out := []GuestInterface{{Name: "lo", MAC: "00:00:00:00:00:00", Addresses: []GuestAddress{{IP: "127.0.0.1", Prefix: 8}, {IP: "::1", Prefix: 128}}}}
	for i := 0; i < 32; i++ {
		netv, ok := v.conf[fmt.Sprintf("net%d", i)]
		if !ok {
			continue
		}
		gi := GuestInterface{Name: fmt.Sprintf("eth%d", i), MAC: netMAC(netv)}
		ipc := parsePropString(v.conf[fmt.Sprintf("ipconfig%d", i)], "")
		for _, k := range []string{"ip", "ip6"} {
			if cidr := ipc[k]; cidr != "" && cidr != "dhcp" && cidr != "auto" {
				ip, pfx, _ := strings.Cut(cidr, "/")
				p, _ := strconv.Atoi(pfx)
				gi.Addresses = append(gi.Addresses, GuestAddress{IP: ip, Prefix: p})
			}
		}
		out = append(out, gi)
	}
	return out
}
