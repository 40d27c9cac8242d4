// Package apischema holds the compact, generated subset of the official
// Proxmox VE API schema that pvesim serves, and the code that derives it.
// The simulator must run without the full schema files, so only the routes it
// serves are extracted and committed (table.json, embedded).
package apischema

// Served lists every method+path pvesim implements. It is the single source
// of truth for the generator (what to extract) and for the simulator's router
// (the conformance test checks both agree).
var Served = []struct{ Method, Path string }{
	{"GET", "/version"},
	{"GET", "/nodes"},
	{"GET", "/nodes/{node}/status"},
	{"GET", "/cluster/status"},
	{"GET", "/cluster/resources"},
	{"GET", "/cluster/tasks"},
	{"GET", "/cluster/nextid"},
	{"GET", "/access/permissions"},
	{"GET", "/nodes/{node}/storage"},
	{"GET", "/nodes/{node}/storage/{storage}/status"},
	{"GET", "/nodes/{node}/storage/{storage}/content"},
	{"GET", "/nodes/{node}/storage/{storage}/content/{volume}"},
	{"DELETE", "/nodes/{node}/storage/{storage}/content/{volume}"},
	{"POST", "/nodes/{node}/storage/{storage}/download-url"},
	{"POST", "/nodes/{node}/storage/{storage}/upload"},
	{"GET", "/nodes/{node}/qemu"},
	{"POST", "/nodes/{node}/qemu"},
	{"DELETE", "/nodes/{node}/qemu/{vmid}"},
	{"GET", "/nodes/{node}/qemu/{vmid}/config"},
	{"POST", "/nodes/{node}/qemu/{vmid}/config"},
	{"PUT", "/nodes/{node}/qemu/{vmid}/config"},
	{"PUT", "/nodes/{node}/qemu/{vmid}/resize"},
	{"GET", "/nodes/{node}/qemu/{vmid}/status/current"},
	{"POST", "/nodes/{node}/qemu/{vmid}/status/start"},
	{"POST", "/nodes/{node}/qemu/{vmid}/status/stop"},
	{"POST", "/nodes/{node}/qemu/{vmid}/status/shutdown"},
	{"POST", "/nodes/{node}/qemu/{vmid}/status/reboot"},
	{"POST", "/nodes/{node}/qemu/{vmid}/status/reset"},
	{"GET", "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces"},
	{"GET", "/nodes/{node}/qemu/{vmid}/agent/get-osinfo"},
	{"POST", "/nodes/{node}/qemu/{vmid}/agent/ping"},
	{"GET", "/nodes/{node}/tasks/{upid}/status"},
	{"GET", "/nodes/{node}/tasks/{upid}/log"},
	{"DELETE", "/nodes/{node}/tasks/{upid}"},
	{"GET", "/nodes/{node}/tasks"},
	{"POST", "/nodes/{node}/qemu/{vmid}/migrate"},
	{"GET", "/cluster/ha/resources"},
	{"POST", "/cluster/ha/resources"},
	{"GET", "/cluster/ha/resources/{sid}"},
	{"DELETE", "/cluster/ha/resources/{sid}"},
}
