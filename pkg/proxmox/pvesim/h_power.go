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
		return s.startTask(taskSpec{node: node, typ: typ, id: strconv.Itoa(vm.vmid), user: c.token,
			locks: []string{vmLock(vm.vmid)}, routeKey: "POST /nodes/{node}/qemu/{vmid}/status/" + action,
			run: func(t *task) error {
				switch typ {
				case "qmstart":
					return s.powerOn(t, vm)
				case "qmstop":
					return s.powerOff(t, vm, false)
				case "qmshutdown":
					return s.powerOff(t, vm, true)
				default: // reboot, reset: the guest goes down and comes back.
					s.mu.Lock()
					running := vm.running
					s.mu.Unlock()
					if !running {
						return fmt.Errorf("VM %d not running", vm.vmid)
					}
					if err := s.powerOff(t, vm, false); err != nil {
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

func (s *Server) powerOff(t *task, vm *vmState, graceful bool) error {
	s.mu.Lock()
	if !vm.running {
		s.mu.Unlock()
		if graceful {
			return fmt.Errorf("VM %d not running", vm.vmid)
		}
		return nil
	}
	vm.running = false
	vm.pid = 0
	ev := s.powerEvent(vm)
	s.mu.Unlock()
	s.firePowerOff(ev)
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
