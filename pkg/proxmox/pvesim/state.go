package pvesim

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"
)

// vmState is one guest. conf holds the config file key → raw value, exactly
// like /etc/pve/qemu-server/<vmid>.conf.
type vmState struct {
	vmid      int
	node      string
	conf      map[string]string
	running   bool
	startedAt time.Time
	pid       int
	// agentDown simulates a guest whose agent is not (yet) answering.
	agentDown bool
	// ignoresACPI simulates a guest that does not react to the power
	// button.
	ignoresACPI bool
	// guestIfaces overrides the agent's network-get-interfaces answer.
	guestIfaces []GuestInterface
	pool        string
}

func (v *vmState) name() string { return v.conf["name"] }

// displayName is qemu-server vmstatus' name: the configured one or
// "VM <vmid>" (e.g. during the create window, when the config holds only
// the lock).
func (v *vmState) displayName() string {
	if n := v.conf["name"]; n != "" {
		return n
	}
	return fmt.Sprintf("VM %d", v.vmid)
}

func (v *vmState) digest() string {
	keys := sortedKeys(v.conf)
	h := sha1.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s: %s\n", k, v.conf[k])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// memBytes is the configured memory (default 512 MiB like PVE).
func (v *vmState) memBytes() uint64 {
	m := v.conf["memory"]
	if m == "" {
		return 512 * mib
	}
	kv := parsePropString(m, "current")
	var n uint64
	fmt.Sscan(kv["current"], &n)
	if n == 0 {
		n = 512
	}
	return n * mib
}

func (v *vmState) agentEnabled() bool {
	a := v.conf["agent"]
	if a == "" {
		return false
	}
	return isTrue(parsePropString(a, "enabled")["enabled"])
}

// volume is one storage volume (disk image, ISO or import image).
type volume struct {
	volid   string
	storage string
	// node is "" for volumes on shared storage.
	node    string
	content string // images, iso, import
	name    string
	vmid    int
	size    uint64
	// virtualSize is the disk size an import image yields (qcow2 header).
	virtualSize uint64
	format      string
	ctime       int64
	// data is kept for ISOs only (power-on hooks hand it to node simulators).
	data   []byte
	sha256 string
	// sums are the file's checksums by algorithm (ISO/import files).
	sums map[string]string
	// source is the import-from volid a disk was created from.
	source string
}

type storageState struct {
	cfg     StorageConfig
	content map[string]bool
}

func (s *storageState) availableOn(node string) bool {
	if len(s.cfg.Nodes) == 0 {
		return true
	}
	for _, n := range s.cfg.Nodes {
		if n == node {
			return true
		}
	}
	return false
}

// volKey scopes volumes: shared storages have one namespace, local storages
// one per node.
func (s *storageState) volNode(node string) string {
	if s.cfg.Shared {
		return ""
	}
	return node
}

type nodeState struct {
	cfg    NodeConfig
	online bool
	// proxyDown: the node is up but pveproxy does not accept connections.
	proxyDown bool
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parsePropString splits "a=1,b=2" (with an optional default key for the
// first bare value) into a map.
func parsePropString(s, defaultKey string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			out[defaultKey] = part
			continue
		}
		out[k] = v
	}
	return out
}

func isTrue(s string) bool {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// formatSize renders bytes the way PVE writes size= in drive strings.
func formatSize(b uint64) string {
	switch {
	case b == 0:
		return "0"
	case b%gib == 0:
		return fmt.Sprintf("%dG", b/gib)
	case b%mib == 0:
		return fmt.Sprintf("%dM", b/mib)
	case b%1024 == 0:
		return fmt.Sprintf("%dK", b/1024)
	}
	return fmt.Sprintf("%d", b)
}

// parseSize parses "32G", "512M", "1T", "1024" (bytes... PVE treats a bare
// number in resize as bytes? no: as GiB for new disks; callers decide).
func parseSize(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	mult := uint64(1)
	switch s[len(s)-1] {
	case 'K', 'k':
		mult = 1024
	case 'M', 'm':
		mult = mib
	case 'G', 'g':
		mult = gib
	case 'T', 't':
		mult = 1024 * gib
	}
	num := s
	if mult != 1 {
		num = s[:len(s)-1]
	}
	var f float64
	if _, err := fmt.Sscan(num, &f); err != nil || f < 0 {
		return 0, false
	}
	return uint64(f * float64(mult)), true
}

// driveKeys lists disk slots in PVE's iteration order, which decides the
// vm-<id>-disk-<n> numbering.
func driveKeys() []string {
	var out []string
	for i := 0; i <= 3; i++ {
		out = append(out, fmt.Sprintf("ide%d", i))
	}
	for i := 0; i <= 5; i++ {
		out = append(out, fmt.Sprintf("sata%d", i))
	}
	for i := 0; i <= 30; i++ {
		out = append(out, fmt.Sprintf("scsi%d", i))
	}
	for i := 0; i <= 15; i++ {
		out = append(out, fmt.Sprintf("virtio%d", i))
	}
	return append(out, "efidisk0", "tpmstate0")
}

func isDriveKey(k string) bool {
	for _, p := range []string{"ide", "sata", "scsi", "virtio", "efidisk", "tpmstate", "unused"} {
		if strings.HasPrefix(k, p) {
			rest := k[len(p):]
			if rest != "" && strings.Trim(rest, "0123456789") == "" {
				return true
			}
		}
	}
	return false
}
