package lab

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procInfo is one process seen before Stop.
type procInfo struct {
	pid     int
	cmdline []byte
}

// descendants lists every process below pid (the node simulator's workload API servers and
// etcds are children of this process but not in the lab's process list).
func descendants(pid int) []procInfo {
	parent := map[int]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// Format: pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		id, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		pp, _ := strconv.Atoi(f[1])
		parent[id] = pp
	}
	var out []procInfo
	for id := range parent {
		for p := parent[id]; p > 1; p = parent[p] {
			if p == pid {
				cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", id))
				out = append(out, procInfo{pid: id, cmdline: cl})
				break
			}
		}
	}
	return out
}

// Leftovers lists what still runs after Stop: any process that descended from this one when
// Stop began, any process naming the artifacts dir, and listeners on the control-plane
// endpoint and the nodes' apid addresses. Empty means the lab cleaned up after itself.
func (l *Lab) Leftovers() []string {
	var out []string
	seen := map[int]bool{}
	add := func(pid int, cmdline []byte) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		name := string(bytes.SplitN(cmdline, []byte{0}, 2)[0])
		out = append(out, fmt.Sprintf("%s (pid %d)", filepath.Base(name), pid))
	}
	for _, p := range l.children {
		// Same PID and same command line: the process itself, not a reused PID.
		if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid)); err == nil && bytes.Equal(cl, p.cmdline) {
			add(p.pid, cl)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(l.ArtifactsDir)) {
			add(pid, b)
		}
	}
	addrs := []string{net.JoinHostPort(EndpointIP, "6443")}
	for _, ip := range []string{"127.10.1.1", "127.10.1.2", "127.10.1.3", "127.10.2.1", "127.10.2.2", "127.10.2.3", "127.10.2.4", "127.10.2.5", "127.10.2.6"} {
		addrs = append(addrs, net.JoinHostPort(ip, "50000"))
	}
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, 200*time.Millisecond); err == nil {
			c.Close()
			out = append(out, "listener on "+a)
		}
	}
	return out
}
