package pvesim

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

func (s *Server) release() string {
	parts := strings.SplitN(s.cfg.Version, ".", 3)
	return strings.Join(parts[:min(2, len(parts))], ".")
}

func hVersion(c *reqCtx) (any, *apiError) {
	return map[string]any{"version": c.s.cfg.Version, "release": c.s.release(), "repoid": "5b4e6d5e1a3c2f01", "console": "xtermjs"}, nil
}

// nodeMemUsed is the memory in use on a node right now (what
// /proc/meminfo says): the host's own share (kernel, services, ZFS ARC) plus
// the resident memory of running guests, not their configured memory.
// Callers hold s.mu.
func (s *Server) nodeMemUsed(node string) uint64 {
	now := time.Now()
	used := s.nodes[node].cfg.HostMemory
	for _, v := range s.vms {
		if v.node == node && v.running {
			used += s.vmRSS(v, now)
		}
	}
	return used
}

func hNodes(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for _, name := range s.nodeOrder {
		n := s.nodes[name]
		e := map[string]any{"node": name, "id": "node/" + name, "type": "node", "status": "offline"}
		if st, ok := s.snap.nodes[name]; n.online && ok {
			e["status"] = "online"
			if c.has("/nodes/"+name, "Sys.Audit") {
				e["maxmem"] = st.maxmem
				e["mem"] = st.mem
				e["maxcpu"] = st.maxcpu
				e["cpu"] = st.cpu
				e["uptime"] = st.uptime
				e["level"] = ""
				e["maxdisk"] = 100 * gib
				e["disk"] = 10 * gib
				e["ssl_fingerprint"] = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF"
			}
		}
		out = append(out, e)
	}
	return out, nil
}

func hNodeStatus(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[c.node()]
	used := s.nodeMemUsed(n.cfg.Name)
	free := uint64(0)
	if n.cfg.Memory > used {
		free = n.cfg.Memory - used
	}
	memory := map[string]any{"total": n.cfg.Memory, "used": used, "free": free}
	if !s.cfg.is8() {
		// 9.x reports MemAvailable too (required by its returns schema).
		memory["available"] = free
	}
	return map[string]any{
		"pveversion": fmt.Sprintf("pve-manager/%s/5b4e6d5e1a3c2f01", s.cfg.Version),
		"kversion":   "Linux 6.8.12-1-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-1",
		"uptime":     86400,
		"cpu":        0.01,
		"wait":       0,
		"idle":       0,
		"loadavg":    []string{"0.10", "0.05", "0.01"},
		"memory":     memory,
		"swap":       map[string]any{"total": 0, "used": 0, "free": 0},
		"rootfs":     map[string]any{"total": 100 * gib, "used": 10 * gib, "free": 90 * gib, "avail": 90 * gib},
		"ksm":        map[string]any{"shared": 0},
		"cpuinfo": map[string]any{"cpus": n.cfg.CPUs, "cores": n.cfg.CPUs, "sockets": 1, "model": "pvesim virtual CPU",
			"mhz": "2400.000", "hvm": "1", "user_hz": 100, "flags": "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 sse4_1 sse4_2 popcnt aes avx"},
		"current-kernel": map[string]any{"sysname": "Linux", "release": "6.8.12-1-pve", "machine": "x86_64", "version": "#1 SMP"},
		"boot-info":      map[string]any{"mode": "efi", "secureboot": 0},
	}, nil
}

func hClusterStatus(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	if len(s.nodeOrder) > 1 {
		online := 0
		for _, n := range s.nodes {
			if n.online {
				online++
			}
		}
		quorate := 0
		if online*2 > len(s.nodes) {
			quorate = 1
		}
		out = append(out, map[string]any{"type": "cluster", "id": "cluster", "name": "pvesim", "nodes": len(s.nodeOrder),
			"quorate": quorate, "version": len(s.nodeOrder) + 1})
	}
	for i, name := range s.nodeOrder {
		n := s.nodes[name]
		online := 0
		if n.online {
			online = 1
		}
		local := 0
		if i == 0 {
			local = 1
		}
		out = append(out, map[string]any{"type": "node", "id": "node/" + name, "name": name, "nodeid": i + 1,
			"ip": fmt.Sprintf("127.0.0.%d", i+1), "online": online, "local": local, "level": ""})
	}
	return out, nil
}

func hClusterResources(c *reqCtx) (any, *apiError) {
	s := c.s
	typ := c.params["type"]
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	if typ == "" || typ == "vm" {
		for _, id := range sortedVMIDs(s.vms) {
			v := s.vms[id]
			if !c.has(fmt.Sprintf("/vms/%d", id), "VM.Audit") {
				continue
			}
			out = append(out, s.vmResource(v))
		}
	}
	if typ == "" || typ == "storage" {
		for _, node := range s.nodeOrder {
			for _, sid := range s.storageOrder {
				st := s.storages[sid]
				if !st.availableOn(node) || !c.has("/storage/"+sid, "Datastore.Audit", "Datastore.AllocateSpace") {
					continue
				}
				shared := 0
				if st.cfg.Shared {
					shared = 1
				}
				e := map[string]any{"id": fmt.Sprintf("storage/%s/%s", node, sid), "type": "storage",
					"storage": sid, "node": node, "status": "unknown", "plugintype": st.cfg.Type,
					"content": st.cfg.Content, "shared": shared}
				if ss, ok := s.snap.storages[node+"/"+sid]; ok && s.nodes[node].online {
					e["status"] = "available"
					e["maxdisk"] = ss.maxdisk
					e["disk"] = ss.disk
				}
				out = append(out, e)
			}
		}
	}
	if typ == "" || typ == "node" {
		for _, name := range s.nodeOrder {
			n := s.nodes[name]
			// PVE::API2Tools::extract_node_stats: every node is listed; its numbers
			// only with Sys.Audit on it.
			audit := c.has("/nodes/"+name, "Sys.Audit")
			e := map[string]any{"id": "node/" + name, "type": "node", "node": name, "status": "offline", "level": ""}
			if st, ok := s.snap.nodes[name]; n.online && ok {
				e["status"] = "online"
				if audit {
					e["maxmem"] = st.maxmem
					e["mem"] = st.mem
					e["maxcpu"] = st.maxcpu
					e["cpu"] = st.cpu
					e["uptime"] = st.uptime
				}
			} else if n.online {
				e["status"] = "unknown"
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// vmResource is a /cluster/resources type=vm entry: placement from the
// vmlist, status and numbers from the last status tick, lock and tags live
// from the config. Callers hold s.mu.
func (s *Server) vmResource(v *vmState) map[string]any {
	e := map[string]any{"id": fmt.Sprintf("qemu/%d", v.vmid), "type": "qemu", "vmid": v.vmid, "node": v.node,
		"status": "unknown"}
	if st, ok := s.snap.vms[v.vmid]; ok && s.nodes[v.node].online {
		e["name"] = st.name
		e["status"] = st.status
		e["uptime"] = st.uptime
		e["template"] = st.template
		e["maxcpu"] = st.maxcpu
		e["cpu"] = 0
		e["maxmem"] = st.maxmem
		e["mem"] = st.mem
		e["maxdisk"] = st.maxdisk
		e["disk"] = 0
		e["netin"], e["netout"], e["diskread"], e["diskwrite"] = 0, 0, 0, 0
	}
	if t := v.conf["tags"]; t != "" {
		e["tags"] = t
	}
	if l := v.conf["lock"]; l != "" {
		e["lock"] = l
	}
	if v.pool != "" {
		e["pool"] = v.pool
	}
	if h := s.ha[v.vmid]; h != nil {
		e["hastate"] = h.state
	}
	return e
}

func statusText(v *vmState) string {
	if v.running {
		return "running"
	}
	return "stopped"
}

func vmCPUs(v *vmState) int {
	cores, sockets := 1, 1
	fmt.Sscan(v.conf["cores"], &cores)
	fmt.Sscan(v.conf["sockets"], &sockets)
	if cores < 1 {
		cores = 1
	}
	if sockets < 1 {
		sockets = 1
	}
	return cores * sockets
}

func hNextID(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := c.params["vmid"]; ok {
		id := c.intParam("vmid")
		if _, used := s.vms[id]; used {
			return nil, errParam("vmid", "VM %s already exists", v)
		}
		// PVE returns the checked id as a string too.
		return v, nil
	}
	for id := s.cfg.NextIDStart; ; id++ {
		if _, used := s.vms[id]; !used {
			return fmt.Sprintf("%d", id), nil
		}
	}
}

func hPermissions(c *reqCtx) (any, *apiError) {
	s := c.s
	paths := []string{"/", "/vms", "/storage", "/nodes", "/access", "/sdn"}
	acls := append([]ACLConfig{}, s.tokens[c.token].ACLs...)
	user, _, _ := strings.Cut(c.token, "!")
	acls = append(acls, s.users[user].ACLs...)
	for _, a := range acls {
		paths = append(paths, normPath(a.Path))
	}
	if p := c.params["path"]; p != "" {
		paths = []string{p}
	}
	if uid := c.params["userid"]; uid != "" && uid != c.token {
		if e := c.checkAll("/access", "Sys.Audit"); e != nil {
			return nil, e
		}
		return nil, errStatus(http.StatusBadRequest, "pvesim only reports the calling token's permissions")
	}
	out := map[string]map[string]int{}
	for _, p := range paths {
		privs := s.privileges(c.token, p)
		if len(privs) == 0 {
			continue
		}
		m := map[string]int{}
		for k := range privs {
			m[k] = 1
		}
		out[p] = m
	}
	return out, nil
}
