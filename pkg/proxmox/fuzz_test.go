package proxmox

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// FuzzDecoders feeds arbitrary bytes to every decoder of Proxmox responses: the wire types
// with their flex fields (PVE sends numbers as strings and booleans as 0/1 depending on the
// version and endpoint), config maps, error bodies and the message classifier. None may
// panic; the flex decoders must agree with encoding/json where both accept the input.
func FuzzDecoders(f *testing.F) {
	for _, s := range []string{
		`{"data":{"version":"9.1.2","release":"9.1","repoid":"abc"}}`,
		`[{"node":"pve1","status":"online","cpu":"0.25","maxcpu":8,"mem":"1024","maxmem":4096}]`,
		`[{"vmid":"100","node":"pve1","template":1,"tags":"a;b"},{"vmid":101.0,"template":"0"}]`,
		`{"active":1,"enabled":"1","shared":true,"total":"1e3","used":null,"avail":-1}`,
		`{"name":"vm","smbios1":"uuid=1234","tags":"cluster-a;machine-b","cores":2,"onboot":true}`,
		`{"message":"Permission check failed (/vms/100, VM.Allocate)\n","errors":{"vmid":"already exists","x":1}}`,
		`{"status":"stopped","exitstatus":"command 'qm' failed: can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"}`,
		`"\u0000"`, `1e999`, `-9223372036854775809`, `{"vmid":{"a":1}}`, ``, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var (
			v   wireVersion
			n   []wireNode
			r   []wireResource
			st  wireStorage
			vol []wireVolume
			vs  wireVMStatus
			ts  wireTaskStatus
			ai  wireAgentInterfaces
			cfg map[string]flexString
		)
		for _, into := range []any{&v, &n, &r, &st, &vol, &vs, &ts, &ai, &cfg} {
			_ = json.Unmarshal(b, into)
		}
		c := VMConfig{}
		for k, val := range cfg {
			c[k] = string(val)
		}
		_, _, _ = c.Name(), c.SMBIOSUUID(), c.Tags()
		msg, errs := parseErrorBody(b)
		_ = errs
		for _, status := range []int{400, 401, 403, 404, 500, 595, 596} {
			_ = classifyMessage(status, msg)
			_ = classifyMessage(status, string(b))
		}
		s := string(b)
		_ = propertyValue(s, "uuid")
		for _, tag := range splitTags(s) {
			if strings.ContainsAny(tag, ";, ") {
				t.Fatalf("tag %q holds a separator", tag)
			}
		}
		_, _, _ = parseVersion(s)
		_ = parentACLPath(s)
		_ = nodeFromPath(s)
		_ = taskErrorFor(s, "pve1", "qmcreate", s)

		// A JSON string or number decodes to the same text through flexString as through
		// encoding/json.
		var fs flexString
		var js string
		if json.Unmarshal(b, &js) == nil {
			if err := json.Unmarshal(b, &fs); err != nil || string(fs) != js {
				t.Fatalf("flexString(%s) = %q, %v; want %q", b, fs, err, js)
			}
		}
		var fi flexInt
		var ji int64
		if json.Unmarshal(b, &ji) == nil {
			if err := json.Unmarshal(b, &fi); err != nil || int64(fi) != ji {
				t.Fatalf("flexInt(%s) = %d, %v; want %d", b, fi, err, ji)
			}
			quoted := []byte(strconv.Quote(strconv.FormatInt(ji, 10)))
			if err := json.Unmarshal(quoted, &fi); err != nil || int64(fi) != ji {
				t.Fatalf("flexInt(%s) = %d, %v; want %d", quoted, fi, err, ji)
			}
		}
	})
}
