package lab

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/siderolabs/image-factory/pkg/schematic"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/imagefactory/factorysim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab/talossim"
)

// TalosNodeSim is the NodeSimFactory of test/lab/talossim: simulated Talos nodes boot from
// their cidata ISO, answer apid on <node IP>:50000 and run the workload API server on the
// control-plane endpoint.
func TalosNodeSim(assetsDir, artifactsDir string, logf func(string, ...any)) (NodeSimulator, error) {
	return talossim.New(talossim.Options{AssetsDir: assetsDir, ArtifactsDir: artifactsDir, Logf: logf,
		NodeMonitorGracePeriod: NodeMonitorGracePeriod})
}

// NodeMonitorGracePeriod is the lab's kube-controller-manager --node-monitor-grace-period:
// a Node whose kubelet stopped heartbeating turns Ready=Unknown after it (50s upstream; the
// lab compresses it, like pvesim's realistic profile compresses Proxmox' times). Long enough
// that a busy 2-core machine delaying a heartbeat does not flap a healthy node.
const NodeMonitorGracePeriod = 10 * time.Second

// hostReachable tells the node simulator whether a VM's Proxmox node is up: a guest on an
// offline node can neither heartbeat nor answer apid.
func hostReachable(pve *pvesim.Server) func(vmid int) bool {
	return func(vmid int) bool {
		vm, ok := pve.VM(vmid)
		return !ok || pve.NodeOnline(vm.Node)
	}
}

// factorySchematics resolves schematic IDs through the Image Factory simulator's own
// GET /schematics/{id}, so a simulated node knows the extensions of the image it boots.
func factorySchematics(f *factorysim.Server) talossim.SchematicLookup {
	return func(id string) (*schematic.Schematic, error) {
		rec := httptest.NewRecorder()
		f.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/schematics/"+id, nil))
		if rec.Code != http.StatusOK {
			return nil, fmt.Errorf("image factory: GET /schematics/%s: %d", id, rec.Code)
		}
		return schematic.Unmarshal(rec.Body.Bytes())
	}
}
