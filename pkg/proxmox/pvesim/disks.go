package pvesim

import (
	"fmt"
	"strconv"
	"strings"
)

// diskPlan is one drive option to materialize: a new or imported volume,
// an ISO reference, or an existing volume.
type diskPlan struct {
	key      string
	storage  string
	size     uint64 // new disks
	importOf string // import-from source volid
	opts     map[string]string
	iso      bool
}

// planDrive interprets a drive value ("local-lvm:32", "local-lvm:0,import-from=…",
// "local:iso/x.iso,media=cdrom", "none,media=cdrom") and checks privileges and
// existence. Callers hold s.mu. Returns nil plan for values needing no
// allocation.
func (c *reqCtx) planDrive(vmid int, key, value string) (*diskPlan, *apiError) {
	s := c.s
	node := c.node()
	kv := parsePropString(value, "file")
	file := kv["file"]
	if kv["media"] == "cdrom" || key == "cdrom" {
		if file == "none" || file == "cdrom" || file == "" {
			return nil, nil
		}
		v, _ := s.findVolume(file, node)
		if v == nil {
			return nil, errServer("volume '%s' does not exist", file)
		}
		sid, _, _ := strings.Cut(file, ":")
		if e := c.checkAny("/storage/"+sid, "Datastore.Audit", "Datastore.AllocateSpace"); e != nil {
			return nil, e
		}
		return &diskPlan{key: key, iso: true}, nil
	}
	sid, rest, ok := strings.Cut(file, ":")
	if !ok {
		if strings.HasPrefix(file, "/") {
			return nil, errStatus(403, "Permission check failed (only root can use absolute paths)")
		}
		return nil, errParam(key, "unable to parse volume ID '%s'", file)
	}
	size, isNew := newDiskSize(rest)
	if !isNew {
		// Existing volume: it must exist and belong to this VM.
		v, _ := s.findVolume(file, node)
		if v == nil {
			return nil, errServer("volume '%s' does not exist", file)
		}
		if v.vmid != vmid {
			return nil, errServer("volume '%s' is owned by VM %d", file, v.vmid)
		}
		return nil, nil
	}
	// check_storage_access: the privilege first, then the storage's content
	// (a parameter exception).
	if e := c.checkAll("/storage/"+sid, "Datastore.AllocateSpace"); e != nil {
		return nil, e
	}
	st, e := s.storageOn(sid, node)
	if e != nil {
		return nil, e
	}
	if !st.content["images"] {
		return nil, errParam("storage", "storage '%s' does not support vm images", sid)
	}
	p := &diskPlan{key: key, storage: sid, size: size, opts: kv}
	delete(p.opts, "file")
	if src, ok := kv["import-from"]; ok {
		delete(p.opts, "import-from")
		srcSid, _, ok := strings.Cut(src, ":")
		if !ok {
			return nil, errStatus(403, "Permission check failed (only root can import from absolute paths)")
		}
		if e := c.checkAny("/storage/"+srcSid, "Datastore.Audit", "Datastore.AllocateSpace"); e != nil {
			return nil, e
		}
		v, _ := s.findVolume(src, node)
		if v == nil {
			return nil, errServer("%s: volume '%s' does not exist", key, src)
		}
		if v.content != "images" && v.content != "import" {
			return nil, errServer("%s: '%s' has wrong type '%s' - needs to be 'images' or 'import'", key, src, v.content)
		}
		p.importOf = src
	}
	if strings.HasPrefix(key, "efidisk") {
		p.size = 528 * 1024
		if kv["efitype"] == "4m" {
			p.size = 4 * mib
		}
	}
	if strings.HasPrefix(key, "tpmstate") {
		p.size = 4 * mib
	}
	return p, nil
}

// newDiskSize recognizes PVE's "STORAGE:SIZE_GiB" allocation syntax.
func newDiskSize(rest string) (uint64, bool) {
	f, err := strconv.ParseFloat(rest, 64)
	if err != nil || f < 0 {
		return 0, false
	}
	return uint64(f * float64(gib)), true
}

// allocate creates the volume for a plan and returns the drive's new config
// value. Callers hold s.mu.
func (s *Server) allocate(node string, vmid int, p *diskPlan) (string, *volume, error) {
	st := s.storages[p.storage]
	size := p.size
	var source string
	if p.importOf != "" {
		src, _ := s.findVolume(p.importOf, node)
		if src == nil {
			return "", nil, fmt.Errorf("%s: volume '%s' does not exist", p.key, p.importOf)
		}
		size = src.virtualSize
		if size == 0 {
			size = src.size
		}
		source = p.importOf
	}
	if size > s.storageAvail(st, node) {
		return "", nil, fmt.Errorf("unable to create VM %d - not enough free space on storage '%s' (need %s, available %s)",
			vmid, p.storage, formatSize(size), formatSize(s.storageAvail(st, node)))
	}
	name, volid := s.allocDiskName(st, node, vmid)
	format := "raw"
	v := &volume{volid: volid, content: "images", name: name, vmid: vmid, size: size, format: format, source: source}
	s.addVolume(st, node, v)
	opts := map[string]string{"size": formatSize(size)}
	for k, val := range p.opts {
		if k != "size" {
			opts[k] = val
		}
	}
	parts := []string{volid}
	for _, k := range sortedKeys(opts) {
		parts = append(parts, k+"="+opts[k])
	}
	return strings.Join(parts, ","), v, nil
}
