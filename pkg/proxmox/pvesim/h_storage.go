package pvesim

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
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
	upid := s.startTask(taskSpec{node: node, typ: "imgdel", id: "", user: c.token,
		locks: []string{storageLock(sid)}, routeKey: "DELETE /nodes/{node}/storage/{storage}/content/{volume}",
		run: func(t *task) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if cur, _ := s.findVolume(volid, node); cur != nil {
				s.removeVolume(cur)
			}
			t.log = append(t.log, fmt.Sprintf("Removed volume '%s'", volid))
			return nil
		}})
	// pve-storage Content.pm: with `delay`, wait for the worker up to that many seconds;
	// null when it ended well, its error as this call's error, else the UPID.
	if delay := c.intParam("delay"); delay > 0 {
		if ended, status := s.awaitTask(upid, delay); ended {
			if statusIsError(status) {
				return nil, errServer("%s", status)
			}
			return nil, nil
		}
	}
	return upid, nil
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

// fileImportTarget checks storage and file name of download-url/upload like
// pve-storage's Status.pm (before the worker): storage enabled on the node,
// file based, content allowed, file name normalized and its extension valid
// for the content. It returns the storage and the normalized file name.
// Callers hold s.mu.
func (s *Server) fileImportTarget(sid, node, content, rawName string, download bool) (*storageState, string, *apiError) {
	st, e := s.storageOn(sid, node)
	if e != nil {
		return nil, "", e
	}
	if st.cfg.Type != "dir" {
		if download {
			return nil, "", errServer("can't upload to storage type '%s', not a file based storage!", st.cfg.Type)
		}
		return nil, "", errServer("can't upload to storage type '%s'", st.cfg.Type)
	}
	if download && !st.content[content] {
		return nil, "", errServer("storage '%s' is not configured for content-type '%s'", sid, content)
	}
	name := normalizeContentFilename(rawName)
	switch content {
	case "iso":
		if !reISOExt.MatchString(name) {
			return nil, "", errParam("filename", "wrong file extension")
		}
	case "import":
		if !reImportUpload.MatchString(name) {
			return nil, "", errParam("filename", "invalid filename or wrong extension")
		}
	default:
		// PVE also takes vztmpl (container templates), which pvesim does
		// not model; say so rather than pretend PVE refuses it.
		return nil, "", errParam("content", "pvesim supports only content 'iso' and 'import'")
	}
	if !download && !st.content[content] {
		return nil, "", errServer("storage '%s' does not support '%s' content", sid, content)
	}
	return st, name, nil
}

var (
	// ISO_EXT_RE_0 and SAFE_CHAR_CLASS_RE + UPLOAD_IMPORT_EXT_RE_1.
	reISOExt       = regexp.MustCompile(`(?i)[^/]+\.(?:iso|img)$`)
	reImportUpload = regexp.MustCompile(`^[a-zA-Z0-9\-.+=_]+\.(ova|qcow2|raw|vmdk)$`)
)

// checkTransferred is the validity check both transfers run on the file
// before it is stored (assert_iso_content / file_size_info untrusted).
func checkTransferred(path, content, name string, head []byte, size uint64) (uint64, error) {
	switch content {
	case "iso":
		return checkImage(path, "", head, size)
	case "import":
		ext := name[strings.LastIndex(name, ".")+1:]
		if ext == "ova" {
			return size, nil
		}
		return checkImage(path, ext, head, size)
	}
	return size, nil
}

// hDownloadURL follows Status.pm download_url and
// PVE::Tools::download_file_from_url: request-time checks are storage,
// content and file name; the existing-file check, the download, checksum,
// decompression and image check run in the "download" worker.
func hDownloadURL(c *reqCtx) (any, *apiError) {
	s := c.s
	node, sid, content := c.node(), c.params["storage"], c.params["content"]
	comp := c.params["compression"]
	s.mu.Lock()
	st, filename, e := s.fileImportTarget(sid, node, content, c.params["filename"], true)
	s.mu.Unlock()
	if e != nil {
		return nil, e
	}
	rawURL, verify := c.params["url"], true
	if v, ok := c.params["verify-certificates"]; ok {
		verify = isTrue(v)
	}
	algo, want := c.params["checksum-algorithm"], c.params["checksum"]
	if want == "" {
		algo = ""
	}
	dest := contentDir(sid, content) + "/" + filename
	volid := fmt.Sprintf("%s:%s/%s", sid, content, filename)
	return s.startTask(taskSpec{node: node, typ: "download", id: filename, user: c.token,
		routeKey: "POST /nodes/{node}/storage/{storage}/download-url",
		run: func(t *task) error {
			if comp != "" && content != "iso" {
				return fmt.Errorf("decompression not supported for %s", content)
			}
			s.logf(t, "downloading %s to %s", redactURL(rawURL), dest)
			s.mu.Lock()
			existing, _ := s.findVolume(volid, node)
			var existingSum string
			if existing != nil && algo != "" {
				existingSum = existing.sums[algo]
			}
			s.mu.Unlock()
			if existing != nil {
				if algo == "" {
					return fmt.Errorf("refusing to override existing file '%s'", dest)
				}
				s.logf(t, "calculating checksum of existing file...")
				if strings.EqualFold(existingSum, want) {
					s.logf(t, "OK, got correct file already, no need to download")
					return nil
				}
				s.logf(t, "")
				return fmt.Errorf("checksum mismatch: got '%s' != expect '%s', aborting", existingSum, want)
			}
			sink := newFileSink(content == "iso")
			if err := s.fetch(rawURL, verify, sink); err != nil {
				return err
			}
			if algo != "" {
				s.logf(t, "calculating checksum...")
				if got := sink.checksums()[algo]; !strings.EqualFold(got, want) {
					s.logf(t, "")
					return fmt.Errorf("checksum mismatch: got '%s' != expect '%s'", got, want)
				}
				s.logf(t, "OK, checksum verified")
			}
			if comp != "" {
				data, err := decompress(comp, sink.data.Bytes())
				if err != nil {
					return err
				}
				sink = newFileSink(true)
				_, _ = sink.Write(data)
			}
			vsize, err := checkTransferred(fmt.Sprintf("%s.tmp.%d", dest, t.pid), content, filename, sink.head, sink.size)
			if err != nil {
				return err
			}
			// The existence check ran before the download; like wget to a
			// temporary file and rename(), a file that appeared meanwhile
			// (a concurrent download) is replaced.
			if err := s.storeFile(t, st, node, content, filename, sink, vsize); err != nil {
				return err
			}
			s.logf(t, "download of '%s' to '%s' finished", redactURL(rawURL), dest)
			return nil
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
func (s *Server) fetch(raw string, verify bool, sink io.Writer) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("invalid URL: %v", err)
	}
	host := u.Hostname()
	if host == "localhost" {
		host = "127.0.0.1"
		u.Host = net.JoinHostPort(host, portOf(u))
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("download failed: pvesim only downloads from loopback URLs, refusing host '%s'", u.Hostname())
	}
	client := s.downloadClient
	if !verify {
		insecure, err := newDownloadClient(s.cfg.DownloadCAPEM, true)
		if err != nil {
			return err
		}
		client = insecure
	}
	resp, err := client.Get(u.String())
	if err != nil {
		return fmt.Errorf("download failed: %v", unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("download failed: %d %s", resp.StatusCode, strings.TrimPrefix(resp.Status, fmt.Sprintf("%d ", resp.StatusCode)))
	}
	// wget writes the whole body; a short read is a failed download.
	if _, err := io.Copy(sink, resp.Body); err != nil {
		return fmt.Errorf("download failed: %v", err)
	}
	return nil
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

// storeFile writes a downloaded/uploaded file as a volume. An upload
// overwrites an existing file (Status.pm: "we simply overwrite the
// destination file"); a download checked for one before fetching and
// renames over whatever appeared since.
func (s *Server) storeFile(t *task, st *storageState, node, content, filename string, sink *fileSink, virtualSize uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	volid := fmt.Sprintf("%s:%s/%s", st.cfg.Name, content, filename)
	var freed uint64
	if cur, _ := s.findVolume(volid, node); cur != nil {
		freed = cur.size
	}
	if sink.size > s.storageAvail(st, node)+freed {
		return fmt.Errorf("write error: No space left on device")
	}
	if cur, _ := s.findVolume(volid, node); cur != nil {
		s.removeVolume(cur)
	}
	v := &volume{volid: volid, content: content, name: filename, size: sink.size, sha256: sink.digest(),
		format: formatOf(filename), sums: sink.checksums()}
	if content == "iso" {
		v.data = append([]byte(nil), sink.data.Bytes()...)
	}
	if content == "import" {
		v.virtualSize = virtualSize
	}
	s.addVolume(st, node, v)
	return nil
}

// hUpload follows Status.pm upload: request-time checks on storage, content
// and the normalized file name; the "imgcopy" worker verifies the checksum
// and the image (qemu-img info -f <ext>, untrusted) and copies the file,
// overwriting an existing one.
func hUpload(c *reqCtx) (any, *apiError) {
	s := c.s
	node, sid, content := c.node(), c.params["storage"], c.params["content"]
	if c.upload == nil {
		return nil, errServer("missing temporary file name")
	}
	s.mu.Lock()
	st, filename, e := s.fileImportTarget(sid, node, content, c.params["filename"], false)
	s.mu.Unlock()
	if e != nil {
		return nil, e
	}
	up := c.upload
	algo, want := c.params["checksum-algorithm"], c.params["checksum"]
	dest := contentDir(sid, content) + "/" + filename
	return s.startTask(taskSpec{node: node, typ: "imgcopy", id: "", user: c.token,
		routeKey: "POST /nodes/{node}/storage/{storage}/upload",
		run: func(t *task) error {
			s.logf(t, "starting file import from: %s", up.tmpfilename)
			if algo != "" {
				s.logf(t, "calculating checksum...")
				got := up.sink.checksums()[algo]
				if !strings.EqualFold(got, want) {
					s.logf(t, "")
					return fmt.Errorf("checksum mismatch: got '%s' != expect '%s'", got, want)
				}
				s.logf(t, "OK, checksum verified")
			}
			vsize, err := checkTransferred(up.tmpfilename, content, filename, up.sink.head, up.sink.size)
			if err != nil {
				return err
			}
			s.logf(t, "target node: %s", node)
			s.logf(t, "target file: %s", dest)
			s.logf(t, "file size is: %d", up.sink.size)
			s.logf(t, "command: cp -- %s %s", up.tmpfilename, dest)
			if err := s.storeFile(t, st, node, content, filename, up.sink, vsize); err != nil {
				return err
			}
			s.logf(t, "finished file import successfully")
			return nil
		}}), nil
}
