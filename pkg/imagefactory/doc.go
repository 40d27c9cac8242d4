// Package imagefactory builds Talos Image Factory schematics, computes their IDs offline, names
// images and per-VM ISOs in Proxmox storage, and talks to the factory HTTP API with retries.
//
// Offline IDs: a schematic ID is hex(sha256(canonical YAML)). The canonical YAML comes from the
// upstream github.com/siderolabs/image-factory/pkg/schematic type, the same code the factory
// runs, so SchematicID equals the ID returned by POST /schematics (verified in tests for
// `customization: {}` → 376567988ad3… and qemu-guest-agent alone → ce4c980550dd…).
//
// Build cost of the upstream dependency (measured 2026-11 on 2 shared cores, go1.26.8, tiny main
// that also performs an HTTP request, see docs/images.md for the method):
//
//	baseline (net/http only)              188 packages  8.80 MB
//	+ go.yaml.in/yaml/v3 (hand-rolled)    191 packages  9.37 MB  (+0.57 MB)
//	+ image-factory pkg/schematic         196 packages  9.60 MB  (+0.80 MB)
//	+ image-factory pkg/client+schematic  197 packages 10.09 MB  (+1.28 MB)
//	incremental build of the extra packages with a warm std cache: ~5 s
//
// The extra packages are siderolabs/gen/xerrors, talos machinery imager/imageropts, yaml/v4 and
// the two image-factory packages: cheap, and worth it because sharing the factory's own
// Marshal is the only robust way to keep offline IDs equal to the factory's.
package imagefactory
