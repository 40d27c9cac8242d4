package webhooks

import (
	"encoding/json"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// Fuzzing runs the pure defaulting and validation functions, not an API server: any spec
// decodes, defaults and validates without a panic, every error names a field under spec,
// and an accepted spec carries no value that could inject a Proxmox property.

const injection = ",=;/ \n"

func checkErrs(t *testing.T, errs field.ErrorList) {
	t.Helper()
	for _, e := range errs {
		if !strings.HasPrefix(e.Field, "spec") || e.Detail == "" && e.Type != field.ErrorTypeRequired && e.Type != field.ErrorTypeDuplicate {
			t.Fatalf("error names no field or says nothing: %#v", e)
		}
	}
}

func noInjection(t *testing.T, what string, values ...string) {
	t.Helper()
	for _, v := range values {
		if strings.ContainsAny(v, injection) || v == ".." {
			t.Fatalf("%s %q was accepted", what, v)
		}
	}
}

func FuzzValidateClusterSpec(f *testing.F) {
	for _, s := range []string{
		`{"proxmox":{"url":"https://pve.example.com:8006","credentialsRef":{"name":"c"}},"controlPlaneEndpoint":{"host":"10.0.0.10"},"talos":{"version":"v1.13.9"}}`,
		`{"proxmox":{"url":"https://pve:8006"},"controlPlaneEndpointPool":"vip","ipPools":[{"name":"vip","addresses":["10.0.0.10"],"prefix":24},{"name":"n","addresses":["10.0.0.0/29","10.0.0.20-10.0.0.30"],"prefix":24,"gateway":"10.0.0.1"}],"talos":{"version":"v1.13.9"}}`,
		`{"proxmox":{"url":"http://pve/api2/json?x=1"},"imageStorage":"local,x=y","isoStorage":"../iso","failureDomains":[{"name":"a","nodes":["pve1","pve1/.."]}],"talos":{"version":"1.13","extensions":["x","x"],"extraKernelArgs":["a b"]}}`,
		`{"ipPools":[{"name":"a","addresses":["::1-::"],"prefix":200,"gateway":"x"}],"controlPlaneEndpoint":{"host":"a..b"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var spec infrav1.ProxmoxTalosClusterSpec
		if json.Unmarshal(b, &spec) != nil {
			return
		}
		spec.Default()
		errs := ValidateClusterSpec(&spec, field.NewPath("spec"))
		checkErrs(t, errs)
		if len(errs) == 0 {
			noInjection(t, "storage", spec.ImageStorage, spec.ISOStorage)
			for _, fd := range spec.FailureDomains {
				noInjection(t, "node", fd.Nodes...)
			}
		}
		// The template path wraps the same checks.
		tmpl := &infrav1.ProxmoxTalosClusterTemplate{}
		tmpl.Spec.Template.Spec = spec
		checkErrs(t, validateClusterTemplate(tmpl))
	})
}

func FuzzValidateMachineSpec(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"memoryMiB":2048,"cpuType":"host","pool":"capi","tags":["a"],"bootDisk":{"storage":"local-lvm","sizeGiB":20},"networkDevices":[{"name":"net0","bridge":"vmbr0","vlan":5,"ipv4":{"fromPool":"nodes"}}]}`,
		`{"memoryMiB":512,"balloonMiB":4096,"vmIDRange":{"start":200,"end":100},"vmID":50,"node":"pve1,x","allowedNodes":["pve2"],"extraDisks":[{"device":"scsi1"}],"ipAddresses":[{"device":"net0","address":"10.0.0.1"}]}`,
		`{"cpuType":"host,flags=+pcid","pool":"..","tags":["a;b"],"bootDisk":{"storage":"local/../x"},"networkDevices":[{"name":"net0","bridge":"vmbr0,tag=5","ipv4":{"fromPool":"a","dhcp":true}},{"name":"net0"}]}`,
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, b []byte, controlPlane bool) {
		var spec infrav1.ProxmoxTalosMachineSpec
		if json.Unmarshal(b, &spec) != nil {
			return
		}
		spec.Default()
		errs := ValidateMachineSpec(&spec, controlPlane, field.NewPath("spec"))
		checkErrs(t, errs)
		if len(errs) == 0 {
			noInjection(t, "node", append([]string{spec.Node}, spec.AllowedNodes...)...)
			noInjection(t, "pool", spec.Pool)
			noInjection(t, "tag", spec.Tags...)
			noInjection(t, "cpu type", spec.CPUType)
			noInjection(t, "storage", spec.BootDisk.Storage)
			for _, d := range spec.ExtraDisks {
				noInjection(t, "storage", d.Storage)
			}
			for _, n := range spec.NetworkDevices {
				noInjection(t, "bridge", n.Bridge)
			}
		}
		tmpl := &infrav1.ProxmoxTalosMachineTemplate{}
		tmpl.Spec.Template.Spec = spec
		checkErrs(t, validateMachineTemplate(tmpl))
		_ = immutableMachineSpec(spec)
	})
}
