// Package talossim simulates Talos Linux nodes for the lab: when pvesim powers
// a VM on, the simulator reads the boot ISO (nocloud cidata or metal-iso),
// loads the Talos machine config as a real node of the image's Talos release
// would (config.go: Talos' strict loader, kinds of that release only, Validate in
// the platform's mode, extension service configs against the image's schematic;
// a refused config leaves the VM down, see Sim.Refusals) and "boots" the node on
// its static 127.x address. When the cluster is bootstrapped, the bootstrap
// node's inline and loopback extra manifests are applied to the workload API
// server (manifests.go). A booted node answers Talos apid (gRPC with the OS CA's mTLS on
// port 50000) for the RPCs the Talos control-plane provider (CACPPT) makes,
// models etcd membership per workload cluster, and on Bootstrap starts a real
// kube-apiserver and etcd on the cluster's control-plane endpoint. A kubelet
// stand-in registers each booted node as a Node and marks it Ready, as a real
// Talos kubelet would.
//
// Everything binds to 127.0.0.0/8 only. Machine configs carry cluster PKI, so
// nothing here logs config bytes, keys or tokens; private keys the workload
// API server needs are written to a private temporary directory, never under
// ArtifactsDir (which CI may upload).
package talossim
