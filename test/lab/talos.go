package lab

import "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/lab/talossim"

// TalosNodeSim is the NodeSimFactory of test/lab/talossim: simulated Talos nodes boot from
// their cidata ISO, answer apid on <node IP>:50000 and run the workload API server on the
// control-plane endpoint.
func TalosNodeSim(assetsDir, artifactsDir string, logf func(string, ...any)) (NodeSimulator, error) {
	return talossim.New(talossim.Options{AssetsDir: assetsDir, ArtifactsDir: artifactsDir, Logf: logf})
}
