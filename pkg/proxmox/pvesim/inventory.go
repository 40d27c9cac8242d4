package pvesim

import "fmt"

// Inventory is a snapshot of everything the simulator holds, for asserting
// that nothing leaked.
type Inventory struct {
	VMs     []VMInfo
	Volumes []VolumeInfo
}

// VMInfo is one VM.
type VMInfo struct {
	Node   string
	VMID   int
	Name   string
	Tags   []string
	Status string
	Lock   string
	Config map[string]string
}

// VolumeInfo is one volume; Node is empty on shared storage.
type VolumeInfo struct {
	Storage string
	Node    string
	VolID   string
	// Content is "images" (VM disks), "iso" or "import".
	Content string
	Size    uint64
	VMID    int
	// Source is the import-from volume a disk was created from.
	Source string
	SHA256 string
}

// Inventory returns VMs ordered by VMID and volumes ordered by storage,
// node, volid.
func (s *Server) Inventory() Inventory {
	s.mu.Lock()
	defer s.mu.Unlock()
	var inv Inventory
	for _, id := range sortedVMIDs(s.vms) {
		inv.VMs = append(inv.VMs, s.vmInfo(s.vms[id]))
	}
	for _, sid := range s.storageOrder {
		for _, scope := range sortedKeys(s.vols[sid]) {
			for _, vid := range sortedKeys(s.vols[sid][scope]) {
				v := s.vols[sid][scope][vid]
				inv.Volumes = append(inv.Volumes, VolumeInfo{Storage: sid, Node: scope, VolID: v.volid, Content: v.content,
					Size: v.size, VMID: v.vmid, Source: v.source, SHA256: v.sha256})
			}
		}
	}
	return inv
}

// VolumesByContent filters the inventory's volumes.
func (inv Inventory) VolumesByContent(content string) []VolumeInfo {
	var out []VolumeInfo
	for _, v := range inv.Volumes {
		if v.Content == content {
			out = append(out, v)
		}
	}
	return out
}

func (s *Server) vmInfo(v *vmState) VMInfo {
	conf := map[string]string{}
	for k, val := range v.conf {
		conf[k] = val
	}
	return VMInfo{Node: v.node, VMID: v.vmid, Name: v.name(), Tags: splitTags(v.conf["tags"]), Status: statusText(v),
		Lock: v.conf["lock"], Config: conf}
}

// VM returns one VM's info.
func (s *Server) VM(vmid int) (VMInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vms[vmid]
	if !ok {
		return VMInfo{}, false
	}
	return s.vmInfo(v), true
}

// GuestInterface is one interface the guest agent reports.
type GuestInterface struct {
	Name      string
	MAC       string
	Addresses []GuestAddress
}

// GuestAddress is one IP with prefix length.
type GuestAddress struct {
	IP     string
	Prefix int
}

// SetGuestInterfaces overrides the agent's network-get-interfaces answer
// (nil restores the default derived from netN/ipconfigN).
func (s *Server) SetGuestInterfaces(vmid int, ifaces []GuestInterface) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vms[vmid]
	if !ok {
		return fmt.Errorf("pvesim: VM %d does not exist", vmid)
	}
	v.guestIfaces = append([]GuestInterface(nil), ifaces...)
	if ifaces == nil {
		v.guestIfaces = nil
	}
	return nil
}

// SetGuestAgentRunning simulates the agent inside a running guest being up
// (default) or not yet/no longer answering.
func (s *Server) SetGuestAgentRunning(vmid int, running bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vms[vmid]
	if !ok {
		return fmt.Errorf("pvesim: VM %d does not exist", vmid)
	}
	v.agentDown = !running
	return nil
}

// AddVolume seeds an ISO or import image (content "iso" or "import") on a
// storage as if uploaded; node is ignored for shared storage. It returns the
// volume ID.
func (s *Server) AddVolume(storage, node, content, filename string, data []byte) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, e := s.prepareFileImport(storage, node, content, filename)
	if e != nil {
		if e.params != nil {
			return "", fmt.Errorf("pvesim: %v", e.params)
		}
		return "", fmt.Errorf("pvesim: %s", e.msg)
	}
	v := newFileVolume(storage, content, filename, data)
	s.addVolume(st, node, v)
	return v.volid, nil
}

// Nodes lists node names in configuration order.
func (s *Server) Nodes() []string {
	return append([]string(nil), s.nodeOrder...)
}

// NodeMemoryUsed is the memory the node reports as used (running VMs plus a
// fixed 2 GiB host share).
func (s *Server) NodeMemoryUsed(node string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodeMemUsed(node)
}

// NodeOnline reports whether a node is up (SetNodeOnline); an unknown node is not.
func (s *Server) NodeOnline(node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[node]
	return ok && n.online
}
