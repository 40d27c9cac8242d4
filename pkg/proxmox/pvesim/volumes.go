package pvesim

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Callers of the helpers in this file hold s.mu.

func (s *Server) storageUsed(st *storageState, node string) uint64 {
	var used uint64
	for _, v := range s.vols[st.cfg.Name][st.volNode(node)] {
		used += v.size
	}
	return used
}

func (s *Server) storageAvail(st *storageState, node string) uint64 {
	used := s.storageUsed(st, node)
	if used >= st.cfg.Size {
		return 0
	}
	return st.cfg.Size - used
}

// storageOn resolves a storage usable on node, with PVE's texts.
func (s *Server) storageOn(sid, node string) (*storageState, *apiError) {
	st, ok := s.storages[sid]
	if !ok {
		return nil, errServer("storage '%s' does not exist", sid)
	}
	if !st.availableOn(node) {
		return nil, errServer("storage '%s' is not available on node '%s'", sid, node)
	}
	return st, nil
}

func (s *Server) volumesOf(st *storageState, node string) map[string]*volume {
	key := st.volNode(node)
	m := s.vols[st.cfg.Name][key]
	if m == nil {
		m = map[string]*volume{}
		s.vols[st.cfg.Name][key] = m
	}
	return m
}

// findVolume looks a volid up as seen from node.
func (s *Server) findVolume(volid, node string) (*volume, *storageState) {
	sid, _, ok := strings.Cut(volid, ":")
	if !ok {
		return nil, nil
	}
	st, ok := s.storages[sid]
	if !ok || !st.availableOn(node) {
		return nil, nil
	}
	return s.volumesOf(st, node)[volid], st
}

func (s *Server) addVolume(st *storageState, node string, v *volume) {
	v.storage = st.cfg.Name
	v.node = st.volNode(node)
	if v.ctime == 0 {
		v.ctime = time.Now().Unix()
	}
	s.volumesOf(st, node)[v.volid] = v
}

func (s *Server) removeVolume(v *volume) {
	delete(s.vols[v.storage][v.node], v.volid)
}

// allocDiskName picks the lowest free vm-<vmid>-disk-<n> on the storage.
func (s *Server) allocDiskName(st *storageState, node string, vmid int) (string, string) {
	vols := s.volumesOf(st, node)
	for n := 0; ; n++ {
		name := fmt.Sprintf("vm-%d-disk-%d", vmid, n)
		volid := st.cfg.Name + ":" + name
		if st.cfg.Type == "dir" {
			volid = fmt.Sprintf("%s:%d/%s.raw", st.cfg.Name, vmid, name)
		}
		if _, used := vols[volid]; !used {
			return name, volid
		}
	}
}

func (s *Server) sortedVolumes(st *storageState, node string) []*volume {
	var out []*volume
	for _, v := range s.volumesOf(st, node) {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].volid < out[j].volid })
	return out
}

var (
	reImportName = regexp.MustCompile(`^[-a-zA-Z0-9_.+=]+\.(ova|ovf|qcow2|raw|vmdk)$`)
	reISOName    = regexp.MustCompile(`^[-a-zA-Z0-9_.+=]+\.(iso|img)$`)
)

// checkFilename applies pve-storage's per-content filename rules.
func checkFilename(content, name string) *apiError {
	switch content {
	case "import":
		if !reImportName.MatchString(name) {
			return errParam("filename", "invalid filename or wrong extension")
		}
	case "iso":
		if !reISOName.MatchString(strings.ToLower(name)) {
			return errParam("filename", "wrong file extension")
		}
	default:
		return errParam("content", "pvesim supports only content 'iso' and 'import'")
	}
	return nil
}

// newFileVolume builds an ISO or import volume from bytes. Only ISOs keep
// their bytes (node simulators boot from them); import images keep size,
// qcow2 virtual size and digest.
func newFileVolume(sid, content, name string, data []byte) *volume {
	sink := newFileSink(false)
	_, _ = sink.Write(data)
	v := &volume{volid: fmt.Sprintf("%s:%s/%s", sid, content, name), content: content, name: name,
		size: uint64(len(data)), sha256: sink.digest(), sums: sink.checksums(), format: formatOf(name)}
	if content == "iso" {
		v.data = data
	}
	if content == "import" {
		v.virtualSize = imageVirtualSize(data)
	}
	return v
}

func formatOf(name string) string {
	switch {
	case strings.HasSuffix(name, ".qcow2"):
		return "qcow2"
	case strings.HasSuffix(name, ".vmdk"):
		return "vmdk"
	case strings.HasSuffix(name, ".ova"):
		return "ova"
	case strings.HasSuffix(name, ".iso"), strings.HasSuffix(name, ".img"):
		return "iso"
	}
	return "raw"
}

// imageVirtualSize reads a qcow2 header's virtual size; raw images are
// their own size.
func imageVirtualSize(data []byte) uint64 {
	if len(data) >= 32 && string(data[:4]) == "QFI\xfb" {
		return binary.BigEndian.Uint64(data[24:32])
	}
	return uint64(len(data))
}
