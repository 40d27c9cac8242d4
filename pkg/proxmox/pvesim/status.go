package pvesim

import "time"

// guestRampUp is how long a booting guest takes to touch most of its
// memory: QEMU allocates guest RAM lazily, so a VM's resident memory (what
// node "mem" counts) grows after start instead of jumping to its configured
// size.
const guestRampUp = 60 * time.Second

// vmRSS is the resident memory of a running guest's QEMU process: 10 % of
// the configured memory right after start, growing to 90 % over
// guestRampUp. Callers hold s.mu.
func (s *Server) vmRSS(vm *vmState, now time.Time) uint64 {
	if !vm.running {
		return 0
	}
	frac := 1.0
	if ramp := s.cfg.scale(guestRampUp); ramp > 0 {
		frac = float64(now.Sub(vm.startedAt)) / float64(ramp)
	}
	if frac > 1 {
		frac = 1
	}
	if frac < 0 {
		frac = 0
	}
	return uint64(float64(vm.memBytes()) * (0.1 + 0.8*frac))
}

// The status snapshot models pvestatd: every StatusInterval it broadcasts
// each node's, guest's and storage's status into the cluster's RRD data,
// and /cluster/resources and /nodes read that (PVE::API2Tools
// extract_vm_stats/extract_node_stats/extract_storage_stats). A guest
// created after the last tick has no entry yet: its status is "unknown" and
// it has no name. Only what /cluster/resources reads from the config files
// (lock, tags) and the vmlist (node) is live.

type vmStat struct {
	name            string
	status          string
	uptime          int64
	maxcpu          int
	maxmem, mem     uint64
	maxdisk         uint64
	template        int
	diskread, netin uint64
}

type nodeStat struct {
	mem, maxmem uint64
	maxcpu      int
	cpu         float64
	uptime      int64
}

type storageStat struct {
	disk, maxdisk uint64
}

type statusSnapshot struct {
	vms      map[int]vmStat
	nodes    map[string]nodeStat
	storages map[string]storageStat // "node/storage"
}

// statusTick takes a snapshot like one pvestatd round on every online
// node. Callers hold s.mu.
func (s *Server) statusTick() {
	now := time.Now()
	snap := &statusSnapshot{vms: map[int]vmStat{}, nodes: map[string]nodeStat{}, storages: map[string]storageStat{}}
	for id, v := range s.vms {
		if !s.nodes[v.node].online {
			continue
		}
		st := vmStat{name: v.displayName(), status: statusText(v), maxcpu: vmCPUs(v), maxmem: v.memBytes(),
			maxdisk: s.vmMaxDisk(v), mem: s.vmRSS(v, now)}
		if v.running {
			st.uptime = int64(now.Sub(v.startedAt).Seconds())
		}
		snap.vms[id] = st
	}
	for _, name := range s.nodeOrder {
		n := s.nodes[name]
		if !n.online {
			continue
		}
		snap.nodes[name] = nodeStat{mem: s.nodeMemUsed(name), maxmem: n.cfg.Memory, maxcpu: n.cfg.CPUs, cpu: 0.01,
			uptime: 86400 + int64(now.Sub(s.started).Seconds())}
		for _, sid := range s.storageOrder {
			st := s.storages[sid]
			if st.availableOn(name) {
				snap.storages[name+"/"+sid] = storageStat{disk: s.storageUsed(st, name), maxdisk: st.cfg.Size}
			}
		}
	}
	s.snap = snap
}

// runStatusDaemon ticks until Close.
func (s *Server) runStatusDaemon() {
	defer s.tasksWG.Done()
	t := time.NewTicker(time.Duration(s.cfg.StatusInterval))
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
			s.mu.Lock()
			s.statusTick()
			s.mu.Unlock()
		}
	}
}
