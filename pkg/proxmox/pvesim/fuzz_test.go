package pvesim

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzRequest sends arbitrary paths, query strings and form bodies through the simulator's
// real request parsing (routing, parameter and property-string validation against the PVE
// schema, disk plans): whatever the input, it answers with a status and a JSON body and
// never panics (a panic in a handler would kill the lab's pvesim process).
func FuzzRequest(f *testing.F) {
	s, err := New(Config{
		Nodes:        []NodeConfig{{Name: "pve1"}},
		Storages:     []StorageConfig{{Name: "local", Type: "dir", Content: "iso,import,images"}, {Name: "local-lvm", Type: "lvmthin", Content: "images"}},
		TaskDuration: Duration(time.Millisecond),
		// Short lock waits keep every input fast; the fuzz engine stops mid-input badly.
		LockTimeout: Duration(20 * time.Millisecond),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(s.Close)
	h := s.Handler()
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete}

	f.Add(uint8(1), "/nodes/pve1/qemu", "", "vmid=100&name=a&scsi0=local-lvm:8,cache=writethrough&net0=virtio,bridge=vmbr0&cpu=x86-64-v2-AES&tags=a;b")
	f.Add(uint8(1), "/nodes/pve1/qemu", "", "vmid=101&scsi0=local-lvm:0,import-from=local:import/x.raw&ide2=local:iso/c.iso,media=cdrom")
	f.Add(uint8(1), "/nodes/pve1/qemu", "", "vmid=102&scsi0=local-lvm:8,cache=unsafe,,=,&net0=virtio,bridge=vmbr0,tag=5,tag=6")
	f.Add(uint8(2), "/nodes/pve1/qemu/100/config", "", "cpu=host,flags=+pcid;-aes&smbios1=uuid=00000000-0000-0000-0000-000000000001&delete=ide2")
	f.Add(uint8(0), "/cluster/resources", "type=vm", "")
	f.Add(uint8(0), "/nodes/pve1/storage/local/content", "content=iso", "")
	f.Add(uint8(1), "/nodes/pve1/storage/local/download-url", "", "content=import&filename=t.qcow2&url=https://127.0.0.1/x")
	f.Add(uint8(1), "/nodes/pve1/qemu/100/resize", "", "disk=scsi0&size=+1G")
	f.Add(uint8(3), "/nodes/pve1/qemu/100", "purge=1&destroy-unreferenced-disks=1", "")
	f.Add(uint8(0), "/nodes/pve1/tasks/UPID:pve1:0:0:0:x:y:z:/status", "", "")
	f.Add(uint8(0), "/nodes/../cluster/nextid", "vmid=%zz", "")

	f.Fuzz(func(t *testing.T, m uint8, path, query, form string) {
		target := "/api2/json" + path
		if query != "" {
			target += "?" + query
		}
		req, err := http.NewRequest(methods[int(m)%len(methods)], "http://127.0.0.1"+target, strings.NewReader(form))
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "PVEAPIToken="+rootTok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 200 || rec.Code > 599 {
			t.Fatalf("status %d", rec.Code)
		}
		if rec.Code >= 500 && strings.Contains(strings.ToLower(rec.Body.String()), "panic") {
			t.Fatalf("handler panicked: %s", rec.Body.String())
		}
		if rec.Body.Len() > 0 && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s: body is not JSON: %q", req.Method, target, rec.Body.String())
		}
	})
}

// FuzzPropString: the property-string, size and image-header parsers never panic, and a
// parsed property string's keys hold no separator (`,`), so one property never becomes two.
func FuzzPropString(f *testing.F) {
	for _, s := range []string{"local-lvm:8,cache=writethrough,discard=on", "virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0,tag=5", ",,=,=", "order=scsi0;ide2", "32G", "+1G", "QFI\xfb", ""} {
		f.Add(s, []byte(s))
	}
	f.Fuzz(func(t *testing.T, s string, data []byte) {
		for k := range parsePropString(s, "file") {
			if strings.Contains(k, ",") {
				t.Fatalf("key %q holds a comma", k)
			}
		}
		_, _ = parseSize(s)
		_, _ = newDiskSize(s)
		_ = imageVirtualSize(data)
		for _, format := range []string{"pve-node", "pve-storage-id", "pve-vmid", "pve-tag-list", "mac-addr", "pve-volume-id", "pve-bridge-id", "pve-qm-smbios1", "dns-name"} {
			_ = checkNamedFormat(format, s)
		}
	})
}
