package pvesim

import (
	"fmt"
	"sort"
	"strings"
)

// PowerEvent describes a VM powering on or off, with everything a Talos
// node simulator needs to "boot" it.
type PowerEvent struct {
	Node string
	VMID int
	Name string
	// UUID is smbios1's uuid (the providerID source).
	UUID string
	Tags []string
	// MACs are the NIC MACs in netN order.
	MACs []string
	// ISOs are attached cdrom volumes with their bytes.
	ISOs []AttachedISO
	// DiskVolume is the first disk's volume ID; DiskSource the image it was
	// imported from (import-from), if any.
	DiskVolume string
	DiskSource string
	// Config is a copy of the VM config.
	Config map[string]string
}

// AttachedISO is one cdrom drive's medium.
type AttachedISO struct {
	Slot  string
	VolID string
	Data  []byte
}

// OnPowerOn registers a hook called (outside locks, from the task
// goroutine) after a VM starts, reboots or resets.
func (s *Server) OnPowerOn(fn func(ev PowerEvent)) {
	s.hookMu.Lock()
	s.onPowerOn = append(s.onPowerOn, fn)
	s.hookMu.Unlock()
}

// OnPowerOff registers a hook called after a VM stops.
func (s *Server) OnPowerOff(fn func(ev PowerEvent)) {
	s.hookMu.Lock()
	s.onPowerOff = append(s.onPowerOff, fn)
	s.hookMu.Unlock()
}

func (s *Server) firePowerOn(ev PowerEvent) {
	s.hookMu.Lock()
	hooks := append([]func(PowerEvent){}, s.onPowerOn...)
	s.hookMu.Unlock()
	for _, h := range hooks {
		h(ev)
	}
}

func (s *Server) firePowerOff(ev PowerEvent) {
	s.hookMu.Lock()
	hooks := append([]func(PowerEvent){}, s.onPowerOff...)
	s.hookMu.Unlock()
	for _, h := range hooks {
		h(ev)
	}
}

// powerEvent snapshots a VM. Callers hold s.mu.
func (s *Server) powerEvent(vm *vmState) PowerEvent {
	ev := PowerEvent{Node: vm.node, VMID: vm.vmid, Name: vm.name(), UUID: parsePropString(vm.conf["smbios1"], "")["uuid"],
		Config: map[string]string{}}
	for k, v := range vm.conf {
		ev.Config[k] = v
	}
	if t := vm.conf["tags"]; t != "" {
		ev.Tags = splitTags(t)
	}
	for i := 0; i < 32; i++ {
		if n, ok := vm.conf[fmt.Sprintf("net%d", i)]; ok {
			ev.MACs = append(ev.MACs, netMAC(n))
		}
	}
	for _, k := range driveKeys() {
		val, ok := vm.conf[k]
		if !ok {
			continue
		}
		file := parsePropString(val, "file")["file"]
		if strings.Contains(val, "media=cdrom") {
			if v, _ := s.findVolume(file, vm.node); v != nil {
				ev.ISOs = append(ev.ISOs, AttachedISO{Slot: k, VolID: file, Data: v.data})
			}
			continue
		}
		if ev.DiskVolume == "" && !strings.HasPrefix(k, "efidisk") && !strings.HasPrefix(k, "tpmstate") {
			ev.DiskVolume = file
			if v, _ := s.findVolume(file, vm.node); v != nil {
				ev.DiskSource = v.source
			}
		}
	}
	return ev
}

func splitTags(t string) []string {
	tags := strings.FieldsFunc(t, func(r rune) bool { return r == ';' || r == ',' || r == ' ' })
	sort.Strings(tags)
	return tags
}
