package pvesim

import (
	"fmt"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Config describes the simulated cluster. The zero value is usable: New fills
// in one node "pve1", storages "local" (dir) and "local-lvm" (lvmthin) and an
// Administrator token "root@pam!pvesim".
type Config struct {
	// Version is the PVE version to mimic: "8.4.1" or "9.1.2" (default). It
	// changes e.g. the guest-agent privilege (VM.Monitor vs VM.GuestAgent.Audit)
	// and which create/config parameters exist.
	Version  string          `json:"version,omitempty"`
	Nodes    []NodeConfig    `json:"nodes,omitempty"`
	Storages []StorageConfig `json:"storages,omitempty"`
	Tokens   []TokenConfig   `json:"tokens,omitempty"`
	// Users are PVE users with their own ACLs. A token whose user is listed
	// here is limited by that user's privileges (see TokenConfig.Privsep);
	// a token whose user is not listed keeps exactly its own ACLs, which is
	// what configs written before users existed expect. root@pam always
	// holds every privilege, as in PVE.
	Users []UserConfig `json:"users,omitempty"`
	// Roles adds or overrides roles (name → privileges).
	Roles map[string][]string `json:"roles,omitempty"`
	// Pools maps pool name → member VMIDs (for /pool/{pool} ACLs).
	Pools map[string][]int `json:"pools,omitempty"`
	// Profile selects the timing model: "fast" (default, for unit tests) or
	// "realistic" (every window Proxmox VE has, in the same order, with
	// Proxmox time compressed by TimeScale). Both profiles model the same
	// behaviour; only durations differ. See docs/pvesim.md.
	Profile string `json:"profile,omitempty"`
	// TimeScale is wall-clock seconds per simulated Proxmox second: every
	// modelled Proxmox duration (pvestatd's 10 s status tick, a guest's ACPI
	// shutdown, the HA CRM/LRM cycle, an offline node's 595, an import at
	// ImportThroughput) is multiplied by it. Default 0.001 in "fast" (10 s →
	// 10 ms), 0.2 in "realistic" (10 s → 2 s).
	TimeScale float64 `json:"timeScale,omitempty"`
	// TaskDuration is the base wall-clock time of every worker task (fork,
	// config parsing, lvcreate, ...). Default 5ms in "fast", 1 s × TimeScale
	// in "realistic".
	TaskDuration Duration `json:"taskDuration,omitempty"`
	// StatusInterval is the wall-clock period of the simulated pvestatd,
	// which refreshes /cluster/resources and /nodes stats. Default
	// 10 s × TimeScale.
	StatusInterval Duration `json:"statusInterval,omitempty"`
	// ImportThroughput is how many bytes of an import-from image's virtual
	// size a create worker converts per Proxmox second (qemu-img convert).
	// Default 40 MiB/s: a 1.2 GiB Talos image takes ~31 Proxmox seconds
	// (6 s wall in "realistic", 31 ms in "fast").
	ImportThroughput uint64 `json:"importThroughput,omitempty"`
	// OfflineDelay is how long a call routed to an offline node waits before
	// pveproxy answers 595 "No route to host" (ARP resolution gives up).
	// Default 3 s × TimeScale.
	OfflineDelay Duration `json:"offlineDelay,omitempty"`
	// LockTimeout is how long an operation waits for a busy VM or storage lock
	// before failing with PVE's "got timeout" text. Default in "fast" 0: fail
	// at once; in "realistic" 10 s × TimeScale (PVE waits 10 s for a VM
	// config lock).
	LockTimeout Duration `json:"lockTimeout,omitempty"`
	// Seed seeds the fault-injection RNG (default 1) so runs are reproducible.
	Seed int64 `json:"seed,omitempty"`
	// DownloadCAPEM lists extra CAs trusted by download-url when
	// verify-certificates=1 (e.g. a local test server's CA).
	DownloadCAPEM string `json:"downloadCAPEM,omitempty"`
	// NextIDStart is the first VMID /cluster/nextid hands out (default 100).
	NextIDStart int `json:"nextIDStart,omitempty"`
}

// NodeConfig is one cluster node.
type NodeConfig struct {
	Name string `json:"name"`
	// Memory in bytes (default 64 GiB).
	Memory uint64 `json:"memory,omitempty"`
	CPUs   int    `json:"cpus,omitempty"`
	// Offline nodes answer 595 to calls proxied to them.
	Offline bool `json:"offline,omitempty"`
	// HostMemory is the node's own memory use outside guests (kernel, PVE
	// services, ZFS ARC), added to guests' resident memory in node "mem".
	// Default 2 GiB.
	HostMemory uint64 `json:"hostMemory,omitempty"`
}

// StorageConfig is one storage definition.
type StorageConfig struct {
	Name string `json:"name"`
	// Type is "dir" or "lvmthin".
	Type string `json:"type,omitempty"`
	// Content is PVE's comma list, e.g. "images,import,iso".
	Content string `json:"content,omitempty"`
	// Size in bytes (default 100 GiB), per node unless Shared.
	Size   uint64 `json:"size,omitempty"`
	Shared bool   `json:"shared,omitempty"`
	// Nodes restricts the storage to these nodes (empty: all).
	Nodes []string `json:"nodes,omitempty"`
}

// TokenConfig is one API token with its own ACL (privilege separation).
type TokenConfig struct {
	// ID is "user@realm!tokenname".
	ID     string      `json:"id"`
	Secret string      `json:"secret"`
	ACLs   []ACLConfig `json:"acls,omitempty"`
	// Privsep is PVE's privilege separation flag (default true, as for
	// tokens created in PVE's UI/API): the token's privileges are its own
	// ACLs intersected with its user's. false: the token has exactly its
	// user's privileges and its own ACLs are ignored.
	Privsep *bool `json:"privsep,omitempty"`
}

// UserConfig is one PVE user ("name@realm") and the ACLs granted to it.
type UserConfig struct {
	ID   string      `json:"id"`
	ACLs []ACLConfig `json:"acls,omitempty"`
}

// ACLConfig grants a role (or explicit privileges) on a path.
type ACLConfig struct {
	Path       string   `json:"path"`
	Role       string   `json:"role,omitempty"`
	Privileges []string `json:"privileges,omitempty"`
	// Propagate defaults to true, as in PVE.
	Propagate *bool `json:"propagate,omitempty"`
}

// Duration is a time.Duration that reads "5ms" from YAML/JSON.
type Duration time.Duration

// UnmarshalJSON accepts Go duration strings or integer nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if v, err := time.ParseDuration(s); err == nil {
		*d = Duration(v)
		return nil
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		return fmt.Errorf("invalid duration %q", s)
	}
	*d = Duration(n)
	return nil
}

// MarshalJSON writes the Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// LoadConfigFile reads a YAML (or JSON) Config.
func LoadConfigFile(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

const (
	gib = uint64(1) << 30
	mib = uint64(1) << 20
)

// DefaultTokenID and DefaultTokenSecret are used when Config.Tokens is empty.
const (
	DefaultTokenID     = "root@pam!pvesim"
	DefaultTokenSecret = "00000000-0000-0000-0000-000000000000"
)

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if out.Version == "" {
		out.Version = "9.1.2"
	}
	if !strings.HasPrefix(out.Version, "8.") && !strings.HasPrefix(out.Version, "9.") {
		return out, fmt.Errorf("pvesim: unsupported version %q (want 8.x or 9.x)", out.Version)
	}
	if len(out.Nodes) == 0 {
		out.Nodes = []NodeConfig{{Name: "pve1"}}
	}
	out.Nodes = append([]NodeConfig(nil), out.Nodes...)
	seen := map[string]bool{}
	for i := range out.Nodes {
		n := &out.Nodes[i]
		if n.Name == "" || seen[n.Name] {
			return out, fmt.Errorf("pvesim: node %d: empty or duplicate name %q", i, n.Name)
		}
		seen[n.Name] = true
		if n.Memory == 0 {
			n.Memory = 64 * gib
		}
		if n.CPUs == 0 {
			n.CPUs = 16
		}
		if n.HostMemory == 0 {
			n.HostMemory = 2 * gib
		}
	}
	if len(out.Storages) == 0 {
		out.Storages = []StorageConfig{
			{Name: "local", Type: "dir", Content: "iso,vztmpl,backup,import,snippets"},
			{Name: "local-lvm", Type: "lvmthin", Content: "images,rootdir"},
		}
	}
	out.Storages = append([]StorageConfig(nil), out.Storages...)
	for i := range out.Storages {
		s := &out.Storages[i]
		if s.Type == "" {
			s.Type = "dir"
		}
		if s.Type != "dir" && s.Type != "lvmthin" {
			return out, fmt.Errorf("pvesim: storage %q: type %q not supported (dir, lvmthin)", s.Name, s.Type)
		}
		if s.Content == "" {
			s.Content = "images"
		}
		if s.Size == 0 {
			s.Size = 100 * gib
		}
		for _, n := range s.Nodes {
			if !seen[n] {
				return out, fmt.Errorf("pvesim: storage %q: unknown node %q", s.Name, n)
			}
		}
	}
	if len(out.Tokens) == 0 {
		out.Tokens = []TokenConfig{{ID: DefaultTokenID, Secret: DefaultTokenSecret,
			ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}}}
	}
	for _, t := range out.Tokens {
		if !strings.Contains(t.ID, "@") || !strings.Contains(t.ID, "!") || t.Secret == "" {
			return out, fmt.Errorf("pvesim: token %q: want id user@realm!name and a secret", t.ID)
		}
	}
	users := map[string]bool{}
	for _, u := range out.Users {
		if !strings.Contains(u.ID, "@") || strings.Contains(u.ID, "!") || users[u.ID] {
			return out, fmt.Errorf("pvesim: user %q: want a unique id user@realm", u.ID)
		}
		users[u.ID] = true
	}
	for _, t := range out.Tokens {
		user, _, _ := strings.Cut(t.ID, "!")
		if t.Privsep != nil && !*t.Privsep && !users[user] && user != "root@pam" {
			return out, fmt.Errorf("pvesim: token %q has privsep=false but its user %q is not in users", t.ID, user)
		}
	}
	switch out.Profile {
	case "", ProfileFast:
		out.Profile = ProfileFast
		if out.TimeScale == 0 {
			out.TimeScale = 0.001
		}
		if out.TaskDuration == 0 {
			out.TaskDuration = Duration(5 * time.Millisecond)
		}
	case ProfileRealistic:
		if out.TimeScale == 0 {
			out.TimeScale = 0.2
		}
		if out.TaskDuration == 0 {
			out.TaskDuration = Duration(out.scale(time.Second))
		}
		if out.LockTimeout == 0 {
			out.LockTimeout = Duration(out.scale(10 * time.Second))
		}
	default:
		return out, fmt.Errorf("pvesim: unknown profile %q (want %q or %q)", out.Profile, ProfileFast, ProfileRealistic)
	}
	if out.TimeScale < 0 {
		return out, fmt.Errorf("pvesim: timeScale %v must be positive", out.TimeScale)
	}
	if out.StatusInterval == 0 {
		out.StatusInterval = Duration(out.scale(10 * time.Second))
	}
	if out.StatusInterval < Duration(time.Millisecond) {
		out.StatusInterval = Duration(time.Millisecond)
	}
	if out.ImportThroughput == 0 {
		out.ImportThroughput = 40 * mib
	}
	if out.OfflineDelay == 0 {
		out.OfflineDelay = Duration(out.scale(3 * time.Second))
	}
	if out.Seed == 0 {
		out.Seed = 1
	}
	if out.NextIDStart == 0 {
		out.NextIDStart = 100
	}
	return out, nil
}

// Profile names for Config.Profile.
const (
	ProfileFast      = "fast"
	ProfileRealistic = "realistic"
)

// scale converts a Proxmox duration to wall-clock time.
func (c *Config) scale(d time.Duration) time.Duration {
	return time.Duration(float64(d) * c.TimeScale)
}

// importDuration is the wall-clock time qemu-img convert takes for an image
// of the given virtual size.
func (c *Config) importDuration(bytes uint64) time.Duration {
	if bytes == 0 {
		return 0
	}
	secs := float64(bytes) / float64(c.ImportThroughput)
	return c.scale(time.Duration(secs * float64(time.Second)))
}

func (c *Config) is8() bool { return strings.HasPrefix(c.Version, "8.") }
