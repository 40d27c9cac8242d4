package proxmox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
)

// schemaFile finds ../shared/pve-api/pve-<version>-apidata.json above the
// module root; the test skips outside the development tree.
func schemaFile(t *testing.T, version string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
	f := filepath.Join(dir, "..", "shared", "pve-api", "pve-"+version+"-apidata.json")
	if _, err := os.Stat(f); err != nil {
		testenv.SkipOrFail(t, "PVE schema %s not found (expected <repo>/../shared/pve-api)", f)
	}
	return f
}

// TestSimResponsesMatchReturnsSchema drives every call of the Client
// interface through the real client against pvesim (8.4 and 9.1) and checks
// every JSON response pvesim sent against the route's `returns` schema of
// the official API schema of that version.
func TestSimResponsesMatchReturnsSchema(t *testing.T) {
	for _, tc := range []struct{ simVersion, schema string }{{"8.4.1", "8.4"}, {"9.1.2", "9.1"}} {
		t.Run(tc.schema, func(t *testing.T) {
			g := NewWithT(t)
			file := schemaFile(t, tc.schema)
			env := startSim(t, pvesim.Config{Version: tc.simVersion})
			var mu sync.Mutex
			var recs []pvesim.ResponseRecord
			env.sim.OnResponse(func(r pvesim.ResponseRecord) {
				mu.Lock()
				recs = append(recs, r)
				mu.Unlock()
			})
			driveEveryCall(t, env)

			mu.Lock()
			defer mu.Unlock()
			covered := map[string]bool{}
			for _, r := range recs {
				covered[r.Method+" "+r.Route] = true
				g.Expect(pvesim.CheckReturns(file, r.Method, r.Route, r.Body)).To(Succeed())
			}
			routes := make([]string, 0, len(covered))
			for k := range covered {
				routes = append(routes, k)
			}
			sort.Strings(routes)
			t.Logf("PVE %s: %d responses on %d routes checked: %s", tc.schema, len(recs), len(routes), strings.Join(routes, ", "))
			// The calls above reach these routes; a client change that stops
			// using one (or a new one) shows up here.
			g.Expect(routes).To(ContainElements(
				"GET /version", "GET /nodes", "GET /nodes/{node}/storage", "GET /nodes/{node}/storage/{storage}/content",
				"POST /nodes/{node}/storage/{storage}/download-url", "POST /nodes/{node}/storage/{storage}/upload",
				"GET /cluster/tasks", "POST /nodes/{node}/qemu", "GET /nodes/{node}/qemu/{vmid}/config",
				"PUT /nodes/{node}/qemu/{vmid}/resize", "GET /cluster/resources", "POST /nodes/{node}/qemu/{vmid}/status/start",
				"GET /nodes/{node}/qemu/{vmid}/status/current", "GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
				"POST /nodes/{node}/qemu/{vmid}/status/shutdown", "POST /nodes/{node}/qemu/{vmid}/status/stop",
				"DELETE /nodes/{node}/qemu/{vmid}", "DELETE /nodes/{node}/storage/{storage}/content/{volume}",
			))
		})
	}
}

// driveEveryCall runs each Client call the provider makes against env's
// pvesim: images by download and upload, cidata ISO, VMID allocation,
// create, resize, tags, lists, config, power, guest agent, ISO swap,
// delete.
func driveEveryCall(t *testing.T, env *simEnv) {
	t.Helper()
	g := NewWithT(t)
	c := env.client
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	image := fakeQCOW2(1 << 30)
	sum := sha256.Sum256(image)
	factory := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(image) }))
	defer factory.Close()

	_, err := c.Version(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.Nodes(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.Storages(ctx, "pve1")
	g.Expect(err).NotTo(HaveOccurred())
	res, err := c.EnsureImage(ctx, ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: talosImage,
		URL: factory.URL + "/i.qcow2", Checksum: hex.EncodeToString(sum[:]), ChecksumAlgorithm: "sha256"})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.EnsureImage(ctx, ImageRequest{Node: "pve1", Storage: "local", Content: "import", Filename: "up.qcow2",
		Checksum: hex.EncodeToString(sum[:]), ChecksumAlgorithm: "sha256",
		Source: func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(strings.NewReader(string(image))), int64(len(image)), nil
		}})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.StorageContent(ctx, "pve1", "local", "")
	g.Expect(err).NotTo(HaveOccurred())
	iso, err := c.UploadISO(ctx, "pve1", "local", "cidata.iso", []byte("cidata"))
	g.Expect(err).NotTo(HaveOccurred())
	vmid, err := c.AllocateVMID(ctx, VMIDRange{Min: 100, Max: 199})
	g.Expect(err).NotTo(HaveOccurred())
	spec := simSpec("pve1", "cp-1", res.VolID)
	spec.VMID = vmid
	spec.CDROM = iso
	_, err = c.CreateVM(ctx, spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.ResizeDisk(ctx, "pve1", vmid, "scsi0", "20G")).To(Succeed())
	g.Expect(c.SetTags(ctx, "pve1", vmid, []string{"capi", "x"})).To(Succeed())
	_, err = c.VMs(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.FindVMs(ctx, VMFilter{Tags: []string{"capi"}})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.VMConfig(ctx, "pve1", vmid)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.StartVM(ctx, "pve1", vmid)).To(Succeed())
	_, err = c.VMStatus(ctx, "pve1", vmid)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = c.GuestNetworkInterfaces(ctx, "pve1", vmid)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.DetachISO(ctx, "pve1", vmid, "ide2")).To(Succeed())
	g.Expect(c.AttachISO(ctx, "pve1", vmid, "ide2", iso)).To(Succeed())
	g.Expect(c.ShutdownVM(ctx, "pve1", vmid, 5*time.Second)).To(Succeed())
	g.Expect(c.StartVM(ctx, "pve1", vmid)).To(Succeed())
	g.Expect(c.StopVM(ctx, "pve1", vmid)).To(Succeed())
	g.Expect(c.DeleteVM(ctx, "pve1", vmid)).To(Succeed())
	g.Expect(c.DeleteVolume(ctx, "pve1", iso)).To(Succeed())
	g.Expect(env.sim.WaitTasks(5 * time.Second)).To(Succeed())

}

// documentedRole is the provider's least-privilege role (reference notes,
// proxmox-api.md): 9.x reads the guest agent with VM.GuestAgent.Audit, 8.4
// with VM.Monitor.
func documentedRole(is8 bool) []string {
	agent := "VM.GuestAgent.Audit"
	if is8 {
		agent = "VM.Monitor"
	}
	return []string{"VM.Allocate", "VM.Audit", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Disk",
		"VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.PowerMgmt", agent,
		"Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit", "SDN.Use",
		"Sys.Audit", "Sys.AccessNetwork"}
}

// TestSimDocumentedRoleSuffices runs every client call with a
// privilege-separated token of a user that holds only the documented role
// (token ACL ∩ user ACL, as PVE computes it), on 8.4 and 9.1.
func TestSimDocumentedRoleSuffices(t *testing.T) {
	for _, version := range []string{"8.4.1", "9.1.2"} {
		t.Run(version, func(t *testing.T) {
			role := documentedRole(strings.HasPrefix(version, "8."))
			acl := []pvesim.ACLConfig{{Path: "/", Role: "CAPI"}}
			env := startSim(t, pvesim.Config{
				Version: version,
				Roles:   map[string][]string{"CAPI": role},
				Users:   []pvesim.UserConfig{{ID: "capi@pve", ACLs: acl}},
				Tokens:  []pvesim.TokenConfig{{ID: "capi@pve!provider", Secret: "5e1f0c2a-0000-4000-8000-000000000001", ACLs: acl}},
			})
			driveEveryCall(t, env)
		})
	}
}

// TestSimUploadOfUnknownSize: pveproxy answers a chunked upload with 501,
// so a source of unknown size is spooled and sent with its Content-Length.
func TestSimUploadOfUnknownSize(t *testing.T) {
	g := NewWithT(t)
	env := startSim(t, pvesim.Config{})
	image := fakeQCOW2(2 << 30)
	res, err := env.client.EnsureImage(context.Background(), ImageRequest{Node: "pve1", Storage: "local", Content: "import",
		Filename: "unknown-size.qcow2", Source: func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(strings.NewReader(string(image))), -1, nil
		}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Transferred).To(BeTrue())
	vols, err := env.client.StorageContent(context.Background(), "pve1", "local", "import")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(vols).To(ContainElement(And(HaveField("VolID", "local:import/unknown-size.qcow2"), HaveField("Size", uint64(len(image))))))
}
