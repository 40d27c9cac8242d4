package proxmox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// VersionInfo is PVE's /version answer.
type VersionInfo struct {
	// Version is the pve-manager version, e.g. "8.4.1".
	Version string
	Release string
	RepoID  string
}

// AtLeast reports whether the version is >= major.minor.
func (v VersionInfo) AtLeast(major, minor int) bool {
	ma, mi, ok := parseVersion(v.Version)
	if !ok {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}

func parseVersion(s string) (int, int, bool) {
	parts := strings.SplitN(strings.TrimSpace(s), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return ma, mi, true
}

// NodeInfo is one cluster node with its free capacity, from GET /nodes.
type NodeInfo struct {
	Name   string
	Online bool
	// CPUs is the number of logical CPUs; CPUUsage the load fraction 0..1.
	CPUs     int
	CPUUsage float64
	// FreeCPUs = CPUs * (1 - CPUUsage).
	FreeCPUs float64
	// Memory in bytes.
	MaxMemory  uint64
	UsedMemory uint64
	FreeMemory uint64
}

// VMRef is a VM as listed by /cluster/resources.
type VMRef struct {
	Node     string
	VMID     int
	Name     string
	Status   string
	Tags     []string
	Pool     string
	Template bool
	Lock     string
	HAState  string
}

// HasTags reports whether all of tags are set on the VM (case-insensitive,
// as PVE compares tags).
func (r VMRef) HasTags(tags ...string) bool {
	for _, t := range tags {
		found := false
		for _, have := range r.Tags {
			if strings.EqualFold(have, t) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// VMFilter selects VMs in FindVMs. Empty fields match everything.
type VMFilter struct {
	Node string
	Name string
	// Tags must all be present.
	Tags []string
	// SMBIOSUUID matches the uuid in the VM's smbios1 config; it costs one
	// config read per candidate, so combine it with Tags or Name.
	SMBIOSUUID string
	// IncludeTemplates also returns templates.
	IncludeTemplates bool
}

// VMIDRange bounds VMID allocation (inclusive). Zero values mean 100 and
// 999999999, PVE's own bounds.
type VMIDRange struct {
	Min int
	Max int
	// Recorded are VMIDs the caller knows to be promised to VMs Proxmox may not show yet
	// (recorded by machines whose create has not been sent); allocation skips them. It
	// covers what this process's reservations cannot: VMIDs recorded before a restart.
	Recorded map[int]bool
}

// StorageInfo is a storage as seen by one node (GET /nodes/{node}/storage).
type StorageInfo struct {
	Name    string
	Type    string
	Content []string
	Active  bool
	Enabled bool
	Shared  bool
	// Sizes in bytes.
	Total     uint64
	Used      uint64
	Available uint64
}

// Supports reports whether the storage accepts the given content type
// ("import", "iso", "images", ...).
func (s StorageInfo) Supports(content string) bool {
	for _, c := range s.Content {
		if c == content {
			return true
		}
	}
	return false
}

// Volume is one entry of a storage's content listing.
type Volume struct {
	VolID   string
	Content string
	Format  string
	Size    uint64
	CTime   int64
	VMID    int
}

// VMStatus is GET /nodes/{node}/qemu/{vmid}/status/current.
type VMStatus struct {
	Node      string
	VMID      int
	Name      string
	Status    string // running | stopped
	QMPStatus string
	Lock      string
	Tags      []string
	Uptime    int64
	// Agent is true when the agent option is enabled in the config (not
	// that the agent answers).
	Agent   bool
	HAState string
}

// Running reports whether the VM runs (or is paused).
func (s VMStatus) Running() bool { return s.Status == "running" }

// VMConfig is a VM's configuration as flat key → value strings, as PVE
// stores it (e.g. "scsi0" → "local-lvm:vm-100-disk-0,size=32G").
type VMConfig map[string]string

// Name returns the VM name.
func (c VMConfig) Name() string { return c["name"] }

// SMBIOSUUID returns the uuid from smbios1 ("uuid=...,manufacturer=...").
func (c VMConfig) SMBIOSUUID() string {
	return propertyValue(c["smbios1"], "uuid")
}

// Tags returns the VM's tags.
func (c VMConfig) Tags() []string { return splitTags(c["tags"]) }

// Digest is the config digest PVE uses for optimistic concurrency.
func (c VMConfig) Digest() string { return c["digest"] }

// GuestInterface is a network interface reported by the QEMU guest agent.
type GuestInterface struct {
	Name string
	MAC  string
	IPs  []GuestIP
}

// GuestIP is an address of a GuestInterface.
type GuestIP struct {
	Address string
	// Type is "ipv4" or "ipv6".
	Type   string
	Prefix int
}

// propertyValue reads key from a PVE property string "k1=v1,k2=v2".
func propertyValue(s, key string) string {
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func splitTags(s string) []string {
	if s == "" {
		return nil
	}
	f := strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == ',' || r == ' ' })
	if len(f) == 0 {
		return nil
	}
	return f
}

// flexNumber returns the digits of a PVE number that arrives as a JSON number or a
// string; "" for null, empty or missing.
func flexNumber(b []byte) (string, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		return "", nil
	}
	if b[0] != '"' {
		return string(b), nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return "", err
	}
	return s, nil
}

// flexInt decodes PVE integers that arrive as numbers or strings.
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s, err := flexNumber(b)
	if err != nil || s == "" {
		*f = 0
		return err
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		*f = flexInt(i)
		return nil
	}
	fl, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("not a number: %s", s)
	}
	*f = flexInt(fl)
	return nil
}

// flexFloat decodes numbers that arrive as numbers or strings.
type flexFloat float64

func (f *flexFloat) UnmarshalJSON(b []byte) error {
	s, err := flexNumber(b)
	if err != nil || s == "" {
		*f = 0
		return err
	}
	fl, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("not a number: %s", s)
	}
	*f = flexFloat(fl)
	return nil
}

// flexBool decodes 0/1, "0"/"1", true/false.
type flexBool bool

func (f *flexBool) UnmarshalJSON(b []byte) error {
	s := strings.Trim(strings.TrimSpace(string(b)), `"`)
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		*f = true
	default:
		*f = false
	}
	return nil
}

// flexString decodes any JSON scalar as a string (config values).
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
		return nil
	}
	if string(b) == "null" {
		*f = ""
		return nil
	}
	*f = flexString(b)
	return nil
}

// Wire types (tolerant decoding of PVE answers).

type wireVersion struct {
	Version string `json:"version"`
	Release string `json:"release"`
	RepoID  string `json:"repoid"`
}

type wireNode struct {
	Node    string    `json:"node"`
	Status  string    `json:"status"`
	CPU     flexFloat `json:"cpu"`
	MaxCPU  flexInt   `json:"maxcpu"`
	Mem     flexInt   `json:"mem"`
	MaxMem  flexInt   `json:"maxmem"`
	Uptime  flexInt   `json:"uptime"`
	Level   string    `json:"level"`
	Type    string    `json:"type"`
	Disk    flexInt   `json:"disk"`
	MaxDisk flexInt   `json:"maxdisk"`
}

type wireResource struct {
	ID       string   `json:"id"`
	Type     string   `json:"type"`
	Node     string   `json:"node"`
	VMID     flexInt  `json:"vmid"`
	Name     string   `json:"name"`
	Status   string   `json:"status"`
	Tags     string   `json:"tags"`
	Pool     string   `json:"pool"`
	Template flexBool `json:"template"`
	Lock     string   `json:"lock"`
	HAState  string   `json:"hastate"`
	// Node entries (type=node) carry the node's numbers, as /nodes does.
	CPU    flexFloat `json:"cpu"`
	MaxCPU flexInt   `json:"maxcpu"`
	Mem    flexInt   `json:"mem"`
	MaxMem flexInt   `json:"maxmem"`
}

type wireStorage struct {
	Storage string   `json:"storage"`
	Type    string   `json:"type"`
	Content string   `json:"content"`
	Active  flexBool `json:"active"`
	Enabled flexBool `json:"enabled"`
	Shared  flexBool `json:"shared"`
	Total   flexInt  `json:"total"`
	Used    flexInt  `json:"used"`
	Avail   flexInt  `json:"avail"`
}

type wireVolume struct {
	VolID   string  `json:"volid"`
	Content string  `json:"content"`
	Format  string  `json:"format"`
	Size    flexInt `json:"size"`
	CTime   flexInt `json:"ctime"`
	VMID    flexInt `json:"vmid"`
}

type wireVMStatus struct {
	VMID      flexInt  `json:"vmid"`
	Name      string   `json:"name"`
	Status    string   `json:"status"`
	QMPStatus string   `json:"qmpstatus"`
	Lock      string   `json:"lock"`
	Tags      string   `json:"tags"`
	Uptime    flexInt  `json:"uptime"`
	Agent     flexBool `json:"agent"`
	HA        struct {
		Managed flexBool `json:"managed"`
		State   string   `json:"state"`
	} `json:"ha"`
}

type wireTaskStatus struct {
	Status     string  `json:"status"`
	ExitStatus string  `json:"exitstatus"`
	Type       string  `json:"type"`
	ID         string  `json:"id"`
	Node       string  `json:"node"`
	User       string  `json:"user"`
	StartTime  flexInt `json:"starttime"`
}

type wireAgentInterfaces struct {
	Result []struct {
		Name        string `json:"name"`
		HWAddr      string `json:"hardware-address"`
		IPAddresses []struct {
			Address string  `json:"ip-address"`
			Type    string  `json:"ip-address-type"`
			Prefix  flexInt `json:"prefix"`
		} `json:"ip-addresses"`
	} `json:"result"`
}
