package pvesim

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim/internal/apischema"
)

// TestErrorsWhereProxmoxRaisesThem: parameter exceptions are 400 with
// errors.<param>; a reason phrase is the message's first line; a task's exit
// status is the last line of its log.
func TestErrorsWhereProxmoxRaisesThem(t *testing.T) {
	s := startSim(t, Config{})
	g := NewWithT(t)
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100")))).To(Equal("OK"))
	unknown := "UPID:pve1:00001234:00012345:65000000:qmstart:100:root@pam!pvesim:"
	tests := []struct {
		name, method, path string
		params             url.Values
		param, text        string
	}{
		{"malformed upid", "GET", "/nodes/pve1/tasks/" + url.PathEscape("UPID:garbage") + "/status", nil, "upid", "unable to parse worker upid"},
		{"malformed upid log", "GET", "/nodes/pve1/tasks/nonsense/log", nil, "upid", "unable to parse worker upid"},
		{"unknown upid", "GET", "/nodes/pve1/tasks/" + url.PathEscape(unknown) + "/status", nil, "upid", "no such task"},
		{"skiplock from a token", "DELETE", "/nodes/pve1/qemu/100", form("skiplock", "1"), "skiplock", "Only root may use this option."},
		{"skiplock on stop", "POST", "/nodes/pve1/qemu/100/status/stop", form("skiplock", "1"), "skiplock", "Only root may use this option."},
		{"storage without images", "POST", "/nodes/pve1/qemu", form("vmid", "101", "scsi0", "local:1"), "storage",
			"storage 'local' does not support vm images"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := root(t, s, tc.method, tc.path, tc.params)
			g.Expect(r.status).To(Equal(400))
			g.Expect(r.reason).To(Equal("Parameter verification failed."))
			g.Expect(r.body["errors"]).To(Equal(map[string]any{tc.param: tc.text}))
		})
	}
	// skiplock=0 is no request to skip the lock.
	g.Expect(root(t, s, "GET", "/nodes/pve1/qemu/100/config", nil).status).To(Equal(200))

	// Reason phrase: first line only; the body keeps the whole message.
	s.AddFault(Fault{Method: "GET", Path: "/nodes/{node}/status", ErrorRate: 1, ErrorText: "first line\nsecond line"})
	r := root(t, s, "GET", "/nodes/pve1/status", nil)
	g.Expect(r.status).To(Equal(500))
	g.Expect(r.reason).To(Equal("first line"))
	g.Expect(r.body["message"]).To(Equal("first line\nsecond line\n"))
	s.ClearFaults()

	// Exit status: the last log line; a multi-line die message is one line
	// with spaces (fork_worker).
	s.AddFault(Fault{Method: "POST", Path: "/nodes/{node}/qemu/{vmid}/status/start", TaskFailureRate: 1, TaskErrorText: "boom\ndetails\n"})
	r = root(t, s, "POST", "/nodes/pve1/qemu/100/status/start", nil)
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("boom details"))
	logs := s.Tasks()
	last := logs[len(logs)-1]
	g.Expect(last.Log[len(last.Log)-1]).To(Equal("TASK ERROR: boom details"))
	g.Expect(readStatus([]string{"x", "TASK WARNINGS: 2"})).To(Equal("WARNINGS: 2"))

	// Destroying a locked VM (here a backup lock) fails the task, not the
	// request (destroy_vm checks the lock inside its worker).
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "102")))).To(Equal("OK"))
	s.mu.Lock()
	s.vms[102].conf["lock"] = "backup"
	s.mu.Unlock()
	r = root(t, s, "DELETE", "/nodes/pve1/qemu/102", nil)
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("VM is locked (backup)"))
	g.Expect(s.Inventory().VMs).To(ContainElement(HaveField("VMID", 102)))
	g.Expect(readStatus([]string{"TASK OK", "stray output"})).To(Equal("unexpected status"))
}

// TestDownloadOntoExistingFile: download_file_from_url refuses an existing
// file in the worker, unless the given checksum matches, then ends OK
// without downloading.
func TestDownloadOntoExistingFile(t *testing.T) {
	g := NewWithT(t)
	payload := qcow2Image(2 * gib)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write(payload)
	}))
	defer srv.Close()
	s := startSim(t, Config{Storages: []StorageConfig{
		{Name: "local", Type: "dir", Content: "iso,import"},
		{Name: "images", Type: "dir", Content: "images"},
		{Name: "local-lvm", Type: "lvmthin", Content: "images"},
	}})
	s512 := sha512.Sum512(payload)
	s256 := sha256.Sum256(payload)
	dl := func(extra ...string) resp {
		return root(t, s, "POST", "/nodes/pve1/storage/local/download-url",
			form(append([]string{"content", "import", "filename", "talos.qcow2", "url", srv.URL + "/talos.qcow2"}, extra...)...))
	}
	g.Expect(waitTask(t, s, "pve1", dl())).To(Equal("OK"))
	g.Expect(hits.Load()).To(Equal(int32(1)))

	tests := []struct {
		name  string
		extra []string
		exit  string
		log   string
	}{
		{"no checksum: refused in the task", nil, "refusing to override existing file '/var/lib/vz/import/talos.qcow2'", ""},
		{"matching checksum of another algorithm: OK without download",
			[]string{"checksum", hex.EncodeToString(s512[:]), "checksum-algorithm", "sha512"}, "OK", "OK, got correct file already, no need to download"},
		{"matching checksum, upper case", []string{"checksum", strings.ToUpper(hex.EncodeToString(s256[:])), "checksum-algorithm", "sha256"}, "OK", ""},
		{"other checksum: aborting", []string{"checksum", strings.Repeat("0", 64), "checksum-algorithm", "sha256"},
			"checksum mismatch: got '" + hex.EncodeToString(s256[:]) + "' != expect '" + strings.Repeat("0", 64) + "', aborting", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := dl(tc.extra...)
			g.Expect(r.status).To(Equal(200), "the request itself succeeds: %s", r.reason)
			g.Expect(waitTask(t, s, "pve1", r)).To(Equal(tc.exit))
			if tc.log != "" {
				tk := s.Tasks()
				g.Expect(tk[len(tk)-1].Log).To(ContainElement(tc.log))
			}
		})
	}
	g.Expect(hits.Load()).To(Equal(int32(1)), "an existing file is never downloaded again")

	// Request-time checks stay in the request.
	r := root(t, s, "POST", "/nodes/pve1/storage/local-lvm/download-url", form("content", "iso", "filename", "a.iso", "url", srv.URL))
	g.Expect(r.reason).To(Equal("can't upload to storage type 'lvmthin', not a file based storage!"))
	r = root(t, s, "POST", "/nodes/pve1/storage/images/download-url", form("content", "iso", "filename", "a.iso", "url", srv.URL))
	g.Expect(r.reason).To(Equal("storage 'images' is not configured for content-type 'iso'"), "%v", r.body)
	// Decompression of a non-ISO fails in the worker.
	r = root(t, s, "POST", "/nodes/pve1/storage/local/download-url",
		form("content", "import", "filename", "b.qcow2", "url", srv.URL, "compression", "gz"))
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("decompression not supported for import"))
}

// multipartBody builds an upload body part by part, exactly in the given
// order (fields before or after the file).
type part struct{ name, filename, value string }

func multipartBody(boundary string, parts ...part) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		fmt.Fprintf(&b, "--%s\r\n", boundary)
		if p.filename != "" {
			fmt.Fprintf(&b, "Content-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\nContent-Type: application/octet-stream\r\n\r\n", p.name, p.filename)
		} else {
			fmt.Fprintf(&b, "Content-Disposition: form-data; name=\"%s\"\r\n\r\n", p.name)
		}
		b.WriteString(p.value)
		b.WriteString("\r\n")
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return b.Bytes()
}

func uploadReq(t *testing.T, s *Server, body io.Reader, length int64, ctype string) resp {
	t.Helper()
	req, _ := http.NewRequest("POST", s.URL()+"/nodes/pve1/storage/local/upload", body)
	req.ContentLength = length
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Authorization", "PVEAPIToken="+rootTok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	r := resp{status: res.StatusCode, reason: strings.TrimPrefix(res.Status, res.Status[:4])}
	_ = json.Unmarshal(b, &r.body)
	return r
}

func qcow2WithBacking() []byte {
	b := qcow2Image(gib)
	b[15] = 0x80 // backing_file_offset = 0x80
	return b
}

// TestUploadLikePveproxy: Content-Length required, chunked → 501, fields in
// pveproxy's order, normalized names, qemu-img format checks, overwrite.
func TestUploadLikePveproxy(t *testing.T) {
	const bnd = "XyZboundary42"
	ct := "multipart/form-data; boundary=" + bnd
	img := qcow2Image(3 * gib)
	sum := sha256.Sum256(img)
	hexsum := hex.EncodeToString(sum[:])
	s := startSim(t, Config{})
	tests := []struct {
		name   string
		parts  []part
		ctype  string
		status int
		reason string
		exit   string
		volid  string
	}{
		{name: "pveproxy order with checksum", parts: []part{{"content", "", "import"}, {"checksum-algorithm", "", "sha256"},
			{"checksum", "", hexsum}, {"filename", "talos.qcow2", string(img)}}, status: 200, exit: "OK", volid: "local:import/talos.qcow2"},
		{name: "checksum before checksum-algorithm", parts: []part{{"content", "", "import"}, {"checksum", "", hexsum},
			{"checksum-algorithm", "", "sha256"}, {"filename", "x.qcow2", string(img)}}, status: 501,
			reason: "wrong Content-Disposition 'form-data; name=\"checksum\""},
		// The file runs to the closing delimiter: a later field becomes file
		// content and is never a parameter.
		{name: "content after the file", parts: []part{{"filename", "y.qcow2", string(img)}, {"content", "", "import"}}, status: 400,
			reason: "Parameter verification failed."},
		{name: "file part not named filename", parts: []part{{"content", "", "iso"}, {"file", "a.iso", "data"}}, status: 501,
			reason: "wrong field name 'file' for file upload, expected 'filename'"},
		// pveproxy's lazy name="(.*?)" spans into the next part.
		{name: "unknown field before the file", parts: []part{{"content", "", "iso"}, {"note", "", "x"}, {"filename", "a.iso", "data"}},
			status: 501, reason: "wrong field name 'note\""},
		{name: "only fields, no file", parts: []part{{"content", "", "iso"}}, status: 501, reason: "upload failed"},
		{name: "name normalized", parts: []part{{"content", "", "iso"}, {"filename", "../my cidata (1).iso", "raw iso bytes"}},
			status: 200, exit: "OK", volid: "local:iso/my_cidata__1_.iso"},
		{name: "qcow2 that is not qcow2", parts: []part{{"content", "", "import"}, {"filename", "fake.qcow2", "not an image"}},
			status: 200, exit: "qemu-img: Could not open '/var/tmp/pveupload-"},
		{name: "qcow2 with backing file", parts: []part{{"content", "", "import"}, {"filename", "backed.qcow2", string(qcow2WithBacking())}},
			status: 200, exit: "backing file not allowed for untrusted image '/var/tmp/pveupload-"},
		{name: "iso that is a backed qcow2", parts: []part{{"content", "", "iso"}, {"filename", "sneaky.iso", string(qcow2WithBacking())}},
			status: 200, exit: "backing file not allowed"},
		{name: "raw takes anything", parts: []part{{"content", "", "import"}, {"filename", "disk.raw", "whatever"}}, status: 200, exit: "OK",
			volid: "local:import/disk.raw"},
		{name: "wrong extension", parts: []part{{"content", "", "import"}, {"filename", "disk.img", "x"}}, status: 400},
		{name: "checksum mismatch fails the task", parts: []part{{"content", "", "iso"}, {"checksum-algorithm", "", "md5"},
			{"checksum", "", "00"}, {"filename", "c.iso", "data"}}, status: 200, exit: "checksum mismatch: got '"},
		{name: "overwrite existing", parts: []part{{"content", "", "import"}, {"filename", "talos.qcow2", string(qcow2Image(5 * gib))}},
			status: 200, exit: "OK", volid: "local:import/talos.qcow2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			body := multipartBody(bnd, tc.parts...)
			ctype := ct
			if tc.ctype != "" {
				ctype = tc.ctype
			}
			r := uploadReq(t, s, bytes.NewReader(body), int64(len(body)), ctype)
			g.Expect(r.status).To(Equal(tc.status), r.reason)
			if tc.reason != "" {
				g.Expect(r.reason).To(HavePrefix(tc.reason))
			}
			if tc.status != 200 {
				return
			}
			g.Expect(waitTask(t, s, "pve1", r)).To(HavePrefix(tc.exit))
			if tc.volid != "" {
				g.Expect(s.Inventory().Volumes).To(ContainElement(HaveField("VolID", tc.volid)))
			}
		})
	}
	g := NewWithT(t)
	// The overwrite replaced the file: one talos.qcow2 with the new size.
	list := root(t, s, "GET", "/nodes/pve1/storage/local/content", form("content", "import")).body["data"].([]any)
	var talos []any
	for _, e := range list {
		if e.(map[string]any)["volid"] == "local:import/talos.qcow2" {
			talos = append(talos, e)
		}
	}
	g.Expect(talos).To(HaveLen(1))

	// A non-multipart upload: pveproxy never answers; the connection ends.
	req, _ := http.NewRequest("POST", s.URL()+"/nodes/pve1/storage/local/upload", strings.NewReader("content=iso"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "PVEAPIToken="+rootTok)
	_, err := http.DefaultClient.Do(req)
	g.Expect(err).To(MatchError(ContainSubstring("EOF")))

	// Chunked bodies are refused before anything else.
	body := multipartBody(bnd, part{"content", "", "iso"}, part{"filename", "chunk.iso", "x"})
	r := uploadReq(t, s, io.MultiReader(bytes.NewReader(body)), -1, ct)
	g.Expect(r.status).To(Equal(501))
	g.Expect(r.reason).To(Equal("chunked transfer encoding not supported"))
	// No body (no Content-Length): handled without content → parameters missing.
	r = uploadReq(t, s, nil, 0, ct)
	g.Expect(r.status).To(Equal(400))
	g.Expect(r.body["errors"]).To(HaveKey("content"))
}

// TestUploadNoTruncation streams a large file and checks every byte counted
// and hashed (no limit, nothing cut off, nothing held in memory for import).
func TestUploadNoTruncation(t *testing.T) {
	g := NewWithT(t)
	s := startSim(t, Config{})
	const bnd = "bigboundary"
	const size = 24 << 20
	head := qcow2Image(10 * gib)
	filler := bytes.Repeat([]byte{0xab}, size-len(head))
	h := sha256.New()
	h.Write(head)
	h.Write(filler)
	want := hex.EncodeToString(h.Sum(nil))
	pre := []byte("--" + bnd + "\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nimport\r\n" +
		"--" + bnd + "\r\nContent-Disposition: form-data; name=\"checksum-algorithm\"\r\n\r\nsha256\r\n" +
		"--" + bnd + "\r\nContent-Disposition: form-data; name=\"checksum\"\r\n\r\n" + want + "\r\n" +
		"--" + bnd + "\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"big.qcow2\"\r\nContent-Type: application/octet-stream\r\n\r\n")
	post := []byte("\r\n--" + bnd + "--\r\n")
	body := io.MultiReader(bytes.NewReader(pre), bytes.NewReader(head), bytes.NewReader(filler), bytes.NewReader(post))
	r := uploadReq(t, s, body, int64(len(pre)+size+len(post)), "multipart/form-data; boundary="+bnd)
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))
	var vol *VolumeInfo
	for _, v := range s.Inventory().Volumes {
		if v.VolID == "local:import/big.qcow2" {
			vol = &v
		}
	}
	g.Expect(vol).NotTo(BeNil())
	g.Expect(vol.Size).To(Equal(uint64(size)))
	g.Expect(vol.SHA256).To(Equal(want))
}

// schemaPrivileges collects every privilege name the version's API schema
// mentions.
func schemaPrivileges(t *testing.T, version string) []string {
	dir, ok, err := apischema.SchemaDir()
	if err != nil || !ok {
		testenv.SkipOrFail(t, "PVE schema files not found at %s (expected <repo>/../shared/pve-api)", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, "pve-"+version+"-apidata.json"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"((?:VM|Sys|Datastore|SDN|Pool|User|Group|Realm|Mapping|Permissions)\.[A-Za-z.]+)"`)
	set := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		set[m[1]] = true
	}
	return sortedKeys(set)
}

// TestBuiltinRolesLikeAccessControl: the built-in roles of 8.4 and 9.1.
func TestBuiltinRolesLikeAccessControl(t *testing.T) {
	vmAdmin84 := []string{"VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit",
		"VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Console", "VM.Migrate",
		"VM.Monitor", "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback"}
	vmAdmin91 := []string{"VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit",
		"VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Console",
		"VM.GuestAgent.Audit", "VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt", "VM.GuestAgent.FileWrite",
		"VM.GuestAgent.Unrestricted", "VM.Migrate", "VM.PowerMgmt", "VM.Replicate", "VM.Snapshot", "VM.Snapshot.Rollback"}
	for _, tc := range []struct {
		version string
		is8     bool
		vmAdmin []string
		vmUser  []string
	}{
		{"8.4", true, vmAdmin84, []string{"VM.Audit", "VM.Backup", "VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console", "VM.PowerMgmt"}},
		{"9.1", false, vmAdmin91, []string{"VM.Audit", "VM.Backup", "VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console",
			"VM.GuestAgent.Audit", "VM.PowerMgmt"}},
	} {
		t.Run(tc.version, func(t *testing.T) {
			g := NewWithT(t)
			roles := builtinRoles(tc.is8)
			g.Expect(roles["PVEVMAdmin"]).To(Equal(tc.vmAdmin), "PVEVMAdmin has VM.* only: no Datastore.*, no SDN.*")
			g.Expect(roles["PVEVMUser"]).To(Equal(tc.vmUser))
			g.Expect(roles["PVEDatastoreUser"]).To(Equal([]string{"Datastore.AllocateSpace", "Datastore.Audit"}))
			g.Expect(roles["PVESDNUser"]).To(Equal([]string{"SDN.Audit", "SDN.Use"}))
			g.Expect(roles["PVETemplateUser"]).To(Equal([]string{"VM.Audit", "VM.Clone"}))
			g.Expect(roles["PVEAuditor"]).To(Equal([]string{"Datastore.Audit", "Mapping.Audit", "Pool.Audit", "SDN.Audit", "Sys.Audit", "VM.Audit"}))
			g.Expect(roles["PVESysAdmin"]).To(Equal([]string{"Sys.Audit", "Sys.Console", "Sys.Syslog"}))
			g.Expect(roles["PVEAdmin"]).NotTo(ContainElements("Mapping.Modify", "Sys.Modify", "Sys.AccessNetwork", "Permissions.Modify", "Realm.Allocate"))
			g.Expect(roles["PVEAdmin"]).To(ContainElements("Mapping.Use", "User.Modify", "Datastore.Allocate"))
			g.Expect(roles["NoAccess"]).To(BeEmpty())
			names := sortedKeys(roles)
			g.Expect(names).To(Equal([]string{"Administrator", "NoAccess", "PVEAdmin", "PVEAuditor", "PVEDatastoreAdmin", "PVEDatastoreUser",
				"PVEMappingAdmin", "PVEMappingUser", "PVEPoolAdmin", "PVEPoolUser", "PVESDNAdmin", "PVESDNUser", "PVESysAdmin",
				"PVETemplateUser", "PVEUserAdmin", "PVEVMAdmin", "PVEVMUser"}))
			// Administrator holds exactly the privileges the version's API
			// schema knows.
			g.Expect(roles["Administrator"]).To(Equal(schemaPrivileges(t, tc.version)))
		})
	}
}

// TestPrivilegesLikeAccessControl: users with ACLs, privsep intersection,
// SDN bridge/tag paths, root-only options, resize storage privilege.
func TestPrivilegesLikeAccessControl(t *testing.T) {
	f, tr := false, true
	s := startSim(t, Config{
		Users: []UserConfig{
			{ID: "alice@pve", ACLs: []ACLConfig{{Path: "/", Role: "PVEVMAdmin"}, {Path: "/sdn/zones/localnetwork", Role: "PVESDNUser"}}},
			{ID: "bob@pve", ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}},
		},
		Tokens: []TokenConfig{
			{ID: DefaultTokenID, Secret: DefaultTokenSecret, ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}},
			// privsep (default): Administrator ∩ alice's PVEVMAdmin.
			{ID: "alice@pve!sep", Secret: "s1", ACLs: []ACLConfig{{Path: "/", Role: "Administrator"}}},
			// no privsep: exactly alice's privileges, own ACLs ignored.
			{ID: "alice@pve!nosep", Secret: "s2", Privsep: &f, ACLs: []ACLConfig{{Path: "/", Role: "NoAccess"}}},
			// privsep with a narrower own ACL.
			{ID: "alice@pve!narrow", Secret: "s3", Privsep: &tr, ACLs: []ACLConfig{{Path: "/vms/100", Role: "PVEVMAdmin"}}},
			// bob is an administrator; his tokens test SDN paths and resize.
			{ID: "bob@pve!bridge", Secret: "s4", ACLs: []ACLConfig{{Path: "/", Role: "PVEVMAdmin"},
				{Path: "/storage/local-lvm", Role: "PVEDatastoreUser"}, {Path: "/sdn/zones/localnetwork/vmbr0", Role: "PVESDNUser"}}},
			{ID: "bob@pve!tagonly", Secret: "s5", ACLs: []ACLConfig{{Path: "/", Role: "PVEVMAdmin"},
				{Path: "/sdn/zones/localnetwork/vmbr0/20", Role: "PVESDNUser"}}},
			{ID: "bob@pve!noprop", Secret: "s6", ACLs: []ACLConfig{{Path: "/", Role: "PVEVMAdmin"},
				{Path: "/sdn/zones/localnetwork/vmbr0", Role: "PVESDNUser", Propagate: &f}}},
			{ID: "bob@pve!nospace", Secret: "s7", ACLs: []ACLConfig{{Path: "/", Role: "PVEVMAdmin"}}},
		},
	})
	g := NewWithT(t)
	g.Expect(waitTask(t, s, "pve1", root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "scsi0", "local-lvm:1")))).To(Equal("OK"))

	tests := []struct {
		name, token, method, path string
		params                    []string
		status                    int
		reason                    string
	}{
		{"privsep token limited by its user", "alice@pve!sep=s1", "POST", "/nodes/pve1/qemu", []string{"vmid", "101", "scsi0", "local-lvm:1"},
			403, "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)"},
		{"privsep token: VM privileges of both", "alice@pve!sep=s1", "GET", "/nodes/pve1/qemu/100/config", nil, 200, ""},
		{"privsep token: node privilege the user lacks", "alice@pve!sep=s1", "GET", "/nodes/pve1/status", nil, 403,
			"Permission check failed (/nodes/pve1, Sys.Audit)"},
		{"non-privsep token has its user's privileges", "alice@pve!nosep=s2", "GET", "/nodes/pve1/qemu/100/config", nil, 200, ""},
		{"non-privsep token: user's SDN grant applies", "alice@pve!nosep=s2", "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "102", "net0", "virtio,bridge=vmbr0,tag=30"}, 200, ""},
		{"narrow privsep token: own ACL path only", "alice@pve!narrow=s3", "GET", "/nodes/pve1/qemu/102/config", nil, 403,
			"Permission check failed (/vms/102, VM.Audit)"},
		{"bridge grant propagates to the tag", "bob@pve!bridge=s4", "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "103", "net0", "virtio,bridge=vmbr0,tag=20"}, 200, ""},
		{"other bridge", "bob@pve!bridge=s4", "POST", "/nodes/pve1/qemu", []string{"vmid", "104", "net0", "virtio,bridge=vmbr1"}, 403,
			"Permission check failed (/sdn/zones/localnetwork/vmbr1, SDN.Use)"},
		{"tag grant alone does not cover the bridge", "bob@pve!tagonly=s5", "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "105", "net0", "virtio,bridge=vmbr0,tag=20"}, 403, "Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)"},
		{"non-propagating bridge grant: tag refused", "bob@pve!noprop=s6", "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "106", "net0", "virtio,bridge=vmbr0,tag=20"}, 403, "Permission check failed (/sdn/zones/localnetwork/vmbr0/20, SDN.Use)"},
		{"trunks checked per tag", "bob@pve!noprop=s6", "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "107", "net0", "virtio,bridge=vmbr0,trunks=10;20"}, 403, "Permission check failed (/sdn/zones/localnetwork/vmbr0/10, SDN.Use)"},
		{"args is root only, even for root@pam's token", rootTok, "POST", "/nodes/pve1/qemu", []string{"vmid", "108", "args", "-no-reboot"},
			500, "only root can set 'args' config"},
		{"rng0 is root only (outside qemu-server's option tables)", rootTok, "POST", "/nodes/pve1/qemu",
			[]string{"vmid", "109", "rng0", "source=/dev/urandom"}, 500, "only root can set 'rng0' config"},
		{"affinity is root only", rootTok, "PUT", "/nodes/pve1/qemu/100/config", []string{"affinity", "0-1"},
			500, "only root can set 'affinity' config"},
		{"startup also needs Sys.Modify on /", "bob@pve!bridge=s4", "PUT", "/nodes/pve1/qemu/100/config", []string{"startup", "order=1"},
			403, "Permission check failed (/, Sys.Modify)"},
		{"hookscript is root only", rootTok, "PUT", "/nodes/pve1/qemu/100/config", []string{"hookscript", "local:snippets/h.pl"},
			500, "only root can set 'hookscript' config"},
		{"serial to a real device is root only", rootTok, "PUT", "/nodes/pve1/qemu/100/config", []string{"serial0", "/dev/ttyS0"},
			500, "only root can set 'serial0' config for real devices"},
		{"serial socket is fine", rootTok, "PUT", "/nodes/pve1/qemu/100/config", []string{"serial0", "socket"}, 200, ""},
		{"unmapped hostpci is root only", rootTok, "PUT", "/nodes/pve1/qemu/100/config", []string{"hostpci0", "0000:01:00.0"},
			500, "only root can set 'hostpci0' config for non-mapped devices"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			r := call(t, s, tc.token, tc.method, tc.path, form(tc.params...))
			g.Expect(r.status).To(Equal(tc.status), r.reason)
			if tc.reason != "" {
				g.Expect(r.reason).To(Equal(tc.reason))
			}
			if tc.status == 200 && tc.method == "POST" {
				g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))
			}
		})
	}
	// Resize: the disk's storage needs Datastore.AllocateSpace, checked in
	// the worker.
	r := call(t, s, "bob@pve!nospace=s7", "PUT", "/nodes/pve1/qemu/100/resize", form("disk", "scsi0", "size", "+1G"))
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)"))
	r = call(t, s, "bob@pve!bridge=s4", "PUT", "/nodes/pve1/qemu/100/resize", form("disk", "scsi0", "size", "+1G"))
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))

	// /access/permissions shows the effective (intersected) privileges.
	perms := call(t, s, "alice@pve!sep=s1", "GET", "/access/permissions", form("path", "/")).body["data"].(map[string]any)["/"].(map[string]any)
	var got []string
	for p := range perms {
		got = append(got, p)
	}
	sort.Strings(got)
	g.Expect(got).To(Equal(builtinRoles(false)["PVEVMAdmin"]))

	// A non-privsep token's user must exist.
	_, err := New(Config{Tokens: []TokenConfig{{ID: "carol@pve!t", Secret: "x", Privsep: &f}}})
	g.Expect(err).To(MatchError(ContainSubstring("privsep=false but its user")))
}

// TestCheckReturnsCatchesMismatches: the response checker used by the
// provider's schema test accepts pvesim's real answers and rejects
// responses that break the returns schema.
func TestCheckReturnsCatchesMismatches(t *testing.T) {
	dir, ok, err := apischema.SchemaDir()
	if err != nil || !ok {
		testenv.SkipOrFail(t, "PVE schema files not found at %s (expected <repo>/../shared/pve-api)", dir)
	}
	file := filepath.Join(dir, "pve-9.1-apidata.json")
	s := startSim(t, Config{})
	var recs []ResponseRecord
	s.OnResponse(func(r ResponseRecord) { recs = append(recs, r) })
	g := NewWithT(t)
	r := root(t, s, "POST", "/nodes/pve1/qemu", form("vmid", "100", "cores", "2"))
	g.Expect(waitTask(t, s, "pve1", r)).To(Equal("OK"))
	root(t, s, "GET", "/nodes/pve1/storage", nil)
	for _, rec := range recs {
		g.Expect(CheckReturns(file, rec.Method, rec.Route, rec.Body)).To(Succeed(), rec.Route)
	}
	tests := []struct {
		name, method, route, body, want string
	}{
		{"missing required property", "GET", "/nodes/{node}/tasks/{upid}/status",
			`{"data":{"id":"","node":"pve1","pid":1,"pstart":1,"starttime":1,"status":"stopped","type":"x","user":"u"}}`,
			"data.upid: property is missing"},
		{"enum", "GET", "/nodes/{node}/tasks/{upid}/status",
			`{"data":{"upid":"u","id":"","node":"pve1","pid":1,"pstart":1,"starttime":1,"status":"done","type":"x","user":"u"}}`,
			"does not have a value in the enumeration"},
		{"integer as text", "GET", "/nodes/{node}/storage",
			`{"data":[{"storage":"local","type":"dir","content":"iso","total":"a lot"}]}`, "type check ('integer') failed"},
		{"object instead of array", "GET", "/nodes/{node}/storage", `{"data":{"storage":"local"}}`, "want array"},
		{"indexed config key typed", "GET", "/nodes/{node}/qemu/{vmid}/config", `{"data":{"digest":"x","cores":"two"}}`,
			"data.cores: type check ('integer') failed"},
		{"string where a UPID is due", "POST", "/nodes/{node}/qemu", `{"data":{"upid":"x"}}`, "want string"},
		{"no data", "GET", "/version", `{"errors":{}}`, "body has no data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(CheckReturns(file, tc.method, tc.route, []byte(tc.body))).To(MatchError(ContainSubstring(tc.want)))
		})
	}
}

// TestRequestBodiesLikePveproxy: bodies only for PUT/POST, at most 64 KiB,
// form or JSON; chunked is refused for every route.
func TestRequestBodiesLikePveproxy(t *testing.T) {
	s := startSim(t, Config{})
	big := "description=" + strings.Repeat("x", 70*1024)
	tests := []struct {
		name, method, path, ctype, body string
		chunked                         bool
		status                          int
		reason                          string
	}{
		{"body on GET", "GET", "/version", "application/x-www-form-urlencoded", "a=1", false, 501, "Unexpected content for method 'GET'"},
		{"too large", "POST", "/nodes/pve1/qemu", "application/x-www-form-urlencoded", "vmid=100&" + big, false, 501, "for data too large"},
		{"other content type", "POST", "/nodes/pve1/qemu", "text/plain", "vmid=100", false, 506, "upload 'Content-Type 'text/plain' not implemented"},
		{"chunked form", "POST", "/nodes/pve1/qemu", "application/x-www-form-urlencoded", "vmid=100", true, 501, "chunked transfer encoding not supported"},
		{"form is fine", "POST", "/nodes/pve1/qemu", "application/x-www-form-urlencoded", "vmid=100", false, 200, ""},
		{"json is fine", "POST", "/nodes/pve1/qemu", "application/json", `{"vmid":101}`, false, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			var body io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				body = io.MultiReader(body)
			}
			req, _ := http.NewRequest(tc.method, s.URL()+tc.path, body)
			req.Header.Set("Content-Type", tc.ctype)
			req.Header.Set("Authorization", "PVEAPIToken="+rootTok)
			res, err := http.DefaultClient.Do(req)
			g.Expect(err).NotTo(HaveOccurred())
			defer res.Body.Close()
			g.Expect(res.StatusCode).To(Equal(tc.status), res.Status)
			if tc.reason != "" {
				g.Expect(res.Status).To(Equal(fmt.Sprintf("%d %s", tc.status, tc.reason)))
			}
		})
	}
}

// TestEveryServedRouteMatchesReturnsSchema hits every route pvesim serves
// (8.4 and 9.1) and checks each successful response against the returns
// schema of that version.
func TestEveryServedRouteMatchesReturnsSchema(t *testing.T) {
	dir, ok, err := apischema.SchemaDir()
	if err != nil || !ok {
		testenv.SkipOrFail(t, "PVE schema files not found at %s (expected <repo>/../shared/pve-api)", dir)
	}
	for _, v := range []struct{ sim, schema string }{{"8.4.1", "8.4"}, {"9.1.2", "9.1"}} {
		t.Run(v.schema, func(t *testing.T) {
			g := NewWithT(t)
			file := filepath.Join(dir, "pve-"+v.schema+"-apidata.json")
			s := startSim(t, Config{Version: v.sim, Nodes: []NodeConfig{{Name: "pve1"}, {Name: "pve2"}}})
			var recs []ResponseRecord
			s.OnResponse(func(r ResponseRecord) { recs = append(recs, r) })
			iso, err := s.AddVolume("local", "pve1", "iso", "a.iso", []byte("iso"))
			g.Expect(err).NotTo(HaveOccurred())
			_, err = s.AddVolume("local", "pve1", "import", "t.qcow2", qcow2Image(gib))
			g.Expect(err).NotTo(HaveOccurred())
			ok200 := func(method, path string, f url.Values) resp {
				r := root(t, s, method, path, f)
				g.Expect(r.status).To(Equal(200), "%s %s: %s", method, path, r.reason)
				return r
			}
			upid := ok200("POST", "/nodes/pve1/qemu", form("vmid", "100", "name", "a", "agent", "1", "cores", "2",
				"scsi0", "local-lvm:0,import-from=local:import/t.qcow2", "ide2", iso+",media=cdrom", "net0", "virtio,bridge=vmbr0"))
			g.Expect(waitTask(t, s, "pve1", upid)).To(Equal("OK"))
			ok200("GET", "/nodes/pve1/tasks/"+url.PathEscape(upid.body["data"].(string))+"/log", nil)
			for _, p := range []string{"/version", "/nodes", "/nodes/pve1/status", "/cluster/status", "/cluster/resources", "/cluster/tasks",
				"/cluster/nextid", "/access/permissions", "/nodes/pve1/storage", "/nodes/pve1/storage/local/status",
				"/nodes/pve1/storage/local/content", "/nodes/pve1/storage/local/content/" + iso, "/nodes/pve1/qemu",
				"/nodes/pve1/qemu/100/config", "/nodes/pve1/qemu/100/status/current"} {
				ok200("GET", p, nil)
			}
			g.Expect(waitTask(t, s, "pve1", ok200("POST", "/nodes/pve1/qemu/100/config", form("memory", "2048")))).To(Equal("OK"))
			ok200("PUT", "/nodes/pve1/qemu/100/config", form("tags", "x"))
			g.Expect(waitTask(t, s, "pve1", ok200("PUT", "/nodes/pve1/qemu/100/resize", form("disk", "scsi0", "size", "+1G")))).To(Equal("OK"))
			g.Expect(waitTask(t, s, "pve1", ok200("POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("OK"))
			for _, p := range []string{"/agent/network-get-interfaces", "/agent/get-osinfo"} {
				ok200("GET", "/nodes/pve1/qemu/100"+p, nil)
			}
			ok200("POST", "/nodes/pve1/qemu/100/agent/ping", nil)
			for _, p := range []string{"reboot", "reset", "shutdown"} {
				g.Expect(waitTask(t, s, "pve1", ok200("POST", "/nodes/pve1/qemu/100/status/"+p, nil))).To(Equal("OK"))
			}
			g.Expect(waitTask(t, s, "pve1", ok200("POST", "/nodes/pve1/qemu/100/status/start", nil))).To(Equal("OK"))
			g.Expect(waitTask(t, s, "pve1", ok200("POST", "/nodes/pve1/qemu/100/status/stop", nil))).To(Equal("OK"))
			ok200("GET", "/nodes/pve1/tasks", form("source", "all"))
			ok200("POST", "/cluster/ha/resources", form("sid", "vm:100", "state", "stopped"))
			ok200("GET", "/cluster/ha/resources", nil)
			ok200("GET", "/cluster/ha/resources/vm:100", nil)
			ok200("DELETE", "/cluster/ha/resources/vm:100", nil)
			g.Expect(waitTask(t, s, "pve1", ok200("POST", "/nodes/pve1/qemu/100/migrate", form("target", "pve2")))).To(Equal("OK"))
			g.Expect(waitTask(t, s, "pve2", ok200("DELETE", "/nodes/pve2/qemu/100", nil))).To(Equal("OK"))
			g.Expect(waitTask(t, s, "pve1", ok200("DELETE", "/nodes/pve1/storage/local/content/"+iso, nil))).To(Equal("OK"))
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("x")) }))
			defer srv.Close()
			dl := ok200("POST", "/nodes/pve1/storage/local/download-url", form("content", "iso", "filename", "b.iso", "url", srv.URL))
			ok200("DELETE", "/nodes/pve1/tasks/"+url.PathEscape(dl.body["data"].(string)), nil)
			body := multipartBody("bnd", part{"content", "", "iso"}, part{"filename", "c.iso", "x"})
			up := uploadReq(t, s, bytes.NewReader(body), int64(len(body)), "multipart/form-data; boundary=bnd")
			g.Expect(waitTask(t, s, "pve1", up)).To(Equal("OK"))
			g.Expect(s.WaitTasks(5 * time.Second)).To(Succeed())

			covered := map[string]bool{}
			for _, r := range recs {
				covered[r.Method+" "+r.Route] = true
				g.Expect(CheckReturns(file, r.Method, r.Route, r.Body)).To(Succeed())
			}
			g.Expect(sortedKeys(covered)).To(ConsistOf(s.Routes()), "every served route was checked")
		})
	}
}

// TestUsersAndPrivsepInConfigFile: users and the token privsep flag load
// from the YAML config (cmd/pvesim -config) and take effect.
func TestUsersAndPrivsepInConfigFile(t *testing.T) {
	g := NewWithT(t)
	p := filepath.Join(t.TempDir(), "c.yaml")
	g.Expect(os.WriteFile(p, []byte(`
users:
  - id: capi@pve
    acls:
      - path: /
        role: PVEAuditor
tokens:
  - id: capi@pve!full
    secret: s1
    privsep: false
  - id: capi@pve!sep
    secret: s2
    acls:
      - path: /
        role: Administrator
`), 0o600)).To(Succeed())
	c, err := LoadConfigFile(p)
	g.Expect(err).NotTo(HaveOccurred())
	s, err := New(c)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(s.Start()).To(Succeed())
	t.Cleanup(s.Close)
	// Both tokens end up with the user's PVEAuditor: reading works, creating does not.
	for _, tok := range []string{"capi@pve!full=s1", "capi@pve!sep=s2"} {
		g.Expect(call(t, s, tok, "GET", "/nodes/pve1/status", nil).status).To(Equal(200), tok)
		g.Expect(call(t, s, tok, "POST", "/nodes/pve1/qemu", form("vmid", "100")).reason).To(Equal("Permission check failed (/vms/100, VM.Allocate)"), tok)
	}
}
