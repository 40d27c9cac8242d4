package pvesim

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/md5"  //nolint:gosec // PVE offers md5 checksums
	"crypto/sha1" //nolint:gosec // PVE offers sha1 checksums
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net"
	"net/url"
	"strings"
)

func hStorageList(c *reqCtx) (any, *apiError) {
	s := c.s
	node := c.node()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for _, sid := range s.storageOrder {
		st := s.storages[sid]
		if !st.availableOn(node) {
			continue
		}
		if want := c.params["storage"]; want != "" && want != sid {
			continue
		}
		if want := c.params["content"]; want != "" {
			ok := false
			for _, ct := range splitList(want) {
				ok = ok || st.content[ct]
			}
			if !ok {
				continue
			}
		}
		if !c.has("/storage/"+sid, "Datastore.Audit", "Datastore.AllocateSpace") {
			continue
		}
		out = append(out, s.storageStatus(st, node))
	}
	return out, nil
}

// storageStatus is PVE's per-node storage status entry. Callers hold s.mu.
func (s *Server) storageStatus(st *storageState, node string) map[string]any {
	used := s.storageUsed(st, node)
	shared := 0
	if st.cfg.Shared {
		shared = 1
	}
	return map[string]any{"storage": st.cfg.Name, "type": st.cfg.Type, "content": st.cfg.Content,
		"active": 1, "enabled": 1, "shared": shared, "total": st.cfg.Size, "used": used,
		"avail": s.storageAvail(st, node), "used_fraction": float64(used) / float64(st.cfg.Size)}
}

func hStorageStatus(c *reqCtx) (any, *apiError) {
	s := c.s
	if e := c.checkAny("/storage/"+c.params["storage"], "Datastore.Audit", "Datastore.AllocateSpace"); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, e := s.storageOn(c.params["storage"], c.node())
	if e != nil {
		return nil, e
	}
	return s.storageStatus(st, c.node()), nil
}

func contentEntry(v *volume) map[string]any {
	e := map[string]any{"volid": v.volid, "content": v.content, "format": v.format, "size": v.size, "ctime": v.ctime}
	if v.vmid != 0 {
		e["vmid"] = v.vmid
	}
	if v.content == "images" {
		e["used"] = v.size
	}
	return e
}

func hContentList(c *reqCtx) (any, *apiError) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st, e := s.storageOn(c.params["storage"], c.node())
	if e != nil {
		return nil, e
	}
	out := []map[string]any{}
	for _, v := range s.sortedVolumes(st, c.node()) {
		if ct := c.params["content"]; ct != "" && ct != v.content {
			continue
		}
		if _, ok := c.params["vmid"]; ok && c.intParam("vmid") != v.vmid {
			continue
		}
		out = append(out, contentEntry(v))
	}
	return out, nil
}

// volumeFromPath accepts "local:iso/x.iso" or the storage-relative
// "iso/x.iso" like PVE.
func (c *reqCtx) volumeFromPath() string {
	vol := c.params["volume"]
	if !strings.Contains(vol, ":") {
		vol = c.params["storage"] + ":" + vol
	}
	return vol
}

func hContentGet(c *reqCtx) (any, *apiError) {
	s := c.s
	volid := c.volumeFromPath()
	sid, _, _ := strings.Cut(volid, ":")
	if e := c.checkAny("/storage/"+sid, "Datastore.Audit", "Datastore.AllocateSpace"); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, e := s.storageOn(sid, c.node()); e != nil {
		return nil, e
	}
	v, _ := s.findVolume(volid, c.node())
	if v == nil {
		return nil, errServer("volume '%s' does not exist", volid)
	}
	return map[string]any{"path": "/var/lib/vz/" + strings.ReplaceAll(strings.SplitN(volid, ":", 2)[1], ":", "/"),
		"size": v.size, "used": v.size, "format": v.format}, nil
}

func hContentDelete(c *reqCtx) (any, *apiError) {
	s := c.s
	volid := c.volumeFromPath()
	sid, _, _ := strings.Cut(volid, ":")
	if e := c.checkAll("/storage/"+sid, "Datastore.Allocate"); e != nil {
		return nil, e
	}
	s.mu.Lock()
	if _, e := s.storageOn(sid, c.node()); e != nil {
		s.mu.Unlock()
		return nil, e
	}
	v, _ := s.findVolume(volid, c.node())
	if v == nil {
		s.mu.Unlock()
		return nil, errServer("volume '%s' does not exist", volid)
	}
	if v.vmid != 0 {
		if vm, ok := s.vms[v.vmid]; ok && vmReferences(vm, volid) {
			s.mu.Unlock()
			return nil, errServer("unable to delete '%s' - volume is still in use (VM %d)", volid, v.vmid)
		}
	}
	s.mu.Unlock()
	node := c.node()
	return s.startTask(taskSpec{node: node, typ: "imgdel", id: "", user: c.token,
		locks: []string{storageLock(sid)}, routeKey: "DELETE /nodes/{node}/storage/{storage}/content/{volume}",
		run: func(t *task) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if cur, _ := s.findVolume(volid, node); cur != nil {
				s.removeVolume(cur)
			}
			t.log = append(t.log, fmt.Sprintf("Removed volume '%s'", volid))
			return nil
		}}), nil
}

func vmReferences(vm *vmState, volid string) bool {
	for k, val := range vm.conf {
		if isDriveKey(k) && parsePropString(val, "file")["file"] == volid {
			return true
		}
	}
	return false
}

// prepareFileImport checks the target of download-url/upload and returns the
// new volid. Callers hold s.mu.
func (s *Server) prepareFileImport(sid, node, content, filename string) (*storageState, *apiError) {
	st, e := s.storageOn(sid, node)
	if e != nil {
		return nil, e
	}
	if e := checkFilename(content, filename); e != nil {
		return nil, e
	}
	if !st.content[content] {
		return nil, errServer("storage '%s' does not support '%s' content", sid, content)
	}
	volid := fmt.Sprintf("%s:%s/%s", sid, content, filename)
	if v, _ := s.findVolume(volid, node); v != nil {
		return nil, errServer("refusing to override existing file '%s'", volid)
	}
	return st, nil
}

func hDownloadURL(c *reqCtx) (any, *apiError) {
	s := c.s
	node, sid, content, filename := c.node(), c.params["storage"], c.params["content"], c.params["filename"]
	comp := c.params["compression"]
	if comp != "" {
		if content != "iso" {
			return nil, errParam("compression", "decompression is only supported for content type 'iso'")
		}
		if comp != "gz" && comp != "bz2" && comp != "zst" && comp != "lzo" {
			return nil, errParam("compression", "value '%s' does not have a value in the enumeration 'gz, lzo, zst, bz2'", comp)
		}
	}
	s.mu.Lock()
	st, e := s.prepareFileImport(sid, node, content, filename)
	s.mu.Unlock()
	if e != nil {
		return nil, e
	}
	rawURL, verify := c.params["url"], true
	if v, ok := c.params["verify-certificates"]; ok {
		verify = isTrue(v)
	}
	algo, sum := c.params["checksum-algorithm"], c.params["checksum"]
	return s.startTask(taskSpec{node: node, typ: "download", id: filename, user: c.token,
		routeKey: "POST /nodes/{node}/storage/{storage}/download-url",
		run: func(t *task) error {
			s.logf(t, "downloading %s to %s", redactURL(rawURL), filename)
			data, err := s.fetch(rawURL, verify)
			if err != nil {
				return err
			}
			if err := verifyChecksum(t, s, data, algo, sum); err != nil {
				return err
			}
			data, err = decompress(comp, data)
			if err != nil {
				return err
			}
			return s.storeFile(t, st, node, content, filename, data)
		}}), nil
}

// redactURL drops userinfo and query so credentials never reach task logs.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<invalid url>"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}

// fetch downloads over loopback only: the URL host must be a loopback
// literal or "localhost", and the dialer re-checks every connection.
func (s *Server) fetch(raw string, verify bool) ([]byte, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid URL: %v", err)
	}
	host := u.Hostname()
	if host == "localhost" {
		host = "127.0.0.1"
		u.Host = net.JoinHostPort(host, portOf(u))
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("download failed: pvesim only downloads from loopback URLs, refusing host '%s'", u.Hostname())
	}
	client := s.downloadClient
	if !verify {
		insecure, err := newDownloadClient(s.cfg.DownloadCAPEM, true)
		if err != nil {
			return nil, err
		}
		client = insecure
	}
	resp, err := client.Get(u.String())
	if err != nil {
		return nil, fmt.Errorf("download failed: %v", unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("download failed: %d %s", resp.StatusCode, strings.TrimPrefix(resp.Status, fmt.Sprintf("%d ", resp.StatusCode)))
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxUpload))
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}

func verifyChecksum(t *task, s *Server, data []byte, algo, want string) error {
	if algo == "" {
		return nil
	}
	var h hash.Hash
	switch algo {
	case "md5":
		h = md5.New() //nolint:gosec
	case "sha1":
		h = sha1.New() //nolint:gosec
	case "sha224":
		h = sha256.New224()
	case "sha256":
		h = sha256.New()
	case "sha384":
		h = sha512.New384()
	case "sha512":
		h = sha512.New()
	default:
		return fmt.Errorf("unknown checksum algorithm '%s'", algo)
	}
	h.Write(data)
	got := hex.EncodeToString(h.Sum(nil))
	if !strings.EqualFold(got, want) {
		return fmt.Errorf("checksum mismatch: got '%s' != expect '%s'", got, want)
	}
	s.logf(t, "calculating checksum...OK, checksum verified")
	return nil
}

func decompress(comp string, data []byte) ([]byte, error) {
	switch comp {
	case "":
		return data, nil
	case "gz":
		r, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("decompression failed: %v", err)
		}
		return io.ReadAll(r)
	case "bz2":
		return io.ReadAll(bzip2.NewReader(bytes.NewReader(data)))
	}
	return nil, fmt.Errorf("decompression with '%s' is not supported by pvesim", comp)
}

// storeFile writes a downloaded/uploaded file as a volume, refusing when the
// storage lacks space.
func (s *Server) storeFile(t *task, st *storageState, node, content, filename string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := newFileVolume(st.cfg.Name, content, filename, data)
	if cur, _ := s.findVolume(v.volid, node); cur != nil {
		return fmt.Errorf("refusing to override existing file '%s'", v.volid)
	}
	if v.size > s.storageAvail(st, node) {
		return fmt.Errorf("write error: No space left on device")
	}
	s.addVolume(st, node, v)
	t.log = append(t.log, fmt.Sprintf("stored %d bytes as '%s'", v.size, v.volid))
	return nil
}

func hUpload(c *reqCtx) (any, *apiError) {
	s := c.s
	node, sid, content := c.node(), c.params["storage"], c.params["content"]
	if c.upload == nil {
		return nil, errParam("filename", "property is missing and it is not optional")
	}
	if _, ok := c.params["tmpfilename"]; ok {
		return nil, errParam("tmpfilename", "tmpfilename is only allowed on the trusted localhost port")
	}
	filename := c.upload.name
	s.mu.Lock()
	st, e := s.prepareFileImport(sid, node, content, filename)
	s.mu.Unlock()
	if e != nil {
		return nil, e
	}
	data := c.upload.data
	algo, sum := c.params["checksum-algorithm"], c.params["checksum"]
	return s.startTask(taskSpec{node: node, typ: "imgcopy", id: "", user: c.token,
		routeKey: "POST /nodes/{node}/storage/{storage}/upload",
		run: func(t *task) error {
			s.logf(t, "starting file import from: /var/tmp/pveupload-pvesim")
			if err := verifyChecksum(t, s, data, algo, sum); err != nil {
				return err
			}
			return s.storeFile(t, st, node, content, filename, data)
		}}), nil
}
