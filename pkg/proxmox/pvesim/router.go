package pvesim

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim/internal/apischema"
)

const apiPrefix = "/api2/json"

type handlerFunc func(c *reqCtx) (any, *apiError)

type route struct {
	method   string
	template string
	segs     []string
	schema   *apischema.Route
	handler  handlerFunc
}

// reqCtx carries one request through auth, validation and the handler.
type reqCtx struct {
	s      *Server
	r      *http.Request
	route  *route
	token  string
	params map[string]string
	// upload is the file part of a multipart upload.
	upload *uploadFile
}

type uploadFile struct {
	name string
	sink *fileSink
	// tmpfilename is pveproxy's temporary file the upload was spooled to.
	tmpfilename string
}

func (s *Server) handlers() map[string]handlerFunc {
	return map[string]handlerFunc{
		"GET /version":                                               hVersion,
		"GET /nodes":                                                 hNodes,
		"GET /nodes/{node}/status":                                   hNodeStatus,
		"GET /cluster/status":                                        hClusterStatus,
		"GET /cluster/resources":                                     hClusterResources,
		"GET /cluster/nextid":                                        hNextID,
		"GET /access/permissions":                                    hPermissions,
		"GET /nodes/{node}/storage":                                  hStorageList,
		"GET /nodes/{node}/storage/{storage}/status":                 hStorageStatus,
		"GET /nodes/{node}/storage/{storage}/content":                hContentList,
		"GET /nodes/{node}/storage/{storage}/content/{volume}":       hContentGet,
		"DELETE /nodes/{node}/storage/{storage}/content/{volume}":    hContentDelete,
		"POST /nodes/{node}/storage/{storage}/download-url":          hDownloadURL,
		"POST /nodes/{node}/storage/{storage}/upload":                hUpload,
		"GET /nodes/{node}/qemu":                                     hVMList,
		"POST /nodes/{node}/qemu":                                    hVMCreate,
		"DELETE /nodes/{node}/qemu/{vmid}":                           hVMDelete,
		"GET /nodes/{node}/qemu/{vmid}/config":                       hVMConfigGet,
		"POST /nodes/{node}/qemu/{vmid}/config":                      hVMConfigAsync,
		"PUT /nodes/{node}/qemu/{vmid}/config":                       hVMConfigSync,
		"PUT /nodes/{node}/qemu/{vmid}/resize":                       hVMResize,
		"GET /nodes/{node}/qemu/{vmid}/status/current":               hVMStatus,
		"POST /nodes/{node}/qemu/{vmid}/status/start":                hPower("qmstart"),
		"POST /nodes/{node}/qemu/{vmid}/status/stop":                 hPower("qmstop"),
		"POST /nodes/{node}/qemu/{vmid}/status/shutdown":             hPower("qmshutdown"),
		"POST /nodes/{node}/qemu/{vmid}/status/reboot":               hPower("qmreboot"),
		"POST /nodes/{node}/qemu/{vmid}/status/reset":                hPower("qmreset"),
		"GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces": hAgentIfaces,
		"GET /nodes/{node}/qemu/{vmid}/agent/get-osinfo":             hAgentOSInfo,
		"POST /nodes/{node}/qemu/{vmid}/agent/ping":                  hAgentPing,
		"GET /nodes/{node}/tasks/{upid}/status":                      hTaskStatus,
		"GET /nodes/{node}/tasks/{upid}/log":                         hTaskLog,
		"DELETE /nodes/{node}/tasks/{upid}":                          hTaskStop,
		"GET /nodes/{node}/tasks":                                    hTaskList,
		"GET /cluster/tasks":                                         hClusterTasks,
		"POST /nodes/{node}/qemu/{vmid}/migrate":                     hMigrate,
		"GET /cluster/ha/resources":                                  hHAList,
		"POST /cluster/ha/resources":                                 hHACreate,
		"GET /cluster/ha/resources/{sid}":                            hHAGet,
		"DELETE /cluster/ha/resources/{sid}":                         hHADelete,
	}
}

func (s *Server) buildRoutes() error {
	hs := s.handlers()
	for _, sv := range apischema.Served {
		key := sv.Method + " " + sv.Path
		h, ok := hs[key]
		if !ok {
			return fmt.Errorf("pvesim: no handler for %s", key)
		}
		sch := s.table.Find(sv.Method, sv.Path)
		if sch == nil {
			return fmt.Errorf("pvesim: embedded schema lacks %s", key)
		}
		s.routes = append(s.routes, &route{method: sv.Method, template: sv.Path,
			segs: strings.Split(strings.Trim(sv.Path, "/"), "/"), schema: sch, handler: h})
		delete(hs, key)
	}
	if len(hs) != 0 {
		return fmt.Errorf("pvesim: handlers without schema route: %v", sortedKeys(hs))
	}
	return nil
}

// Routes lists the served "METHOD /template" pairs.
func (s *Server) Routes() []string {
	out := make([]string, 0, len(s.routes))
	for _, r := range s.routes {
		out = append(out, r.method+" "+r.template)
	}
	return out
}

// match finds the route for a path below /api2/json. A trailing {volume}
// swallows the rest of the path because volume IDs contain '/'.
func (s *Server) match(method, path string) (*route, map[string]string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for _, rt := range s.routes {
		if rt.method != method {
			continue
		}
		if vars, ok := matchSegs(rt.segs, segs); ok {
			return rt, vars
		}
	}
	return nil, nil
}

func matchSegs(tmpl, segs []string) (map[string]string, bool) {
	vars := map[string]string{}
	for i, t := range tmpl {
		if i >= len(segs) {
			return nil, false
		}
		if strings.HasPrefix(t, "{") {
			name := strings.Trim(t, "{}")
			if name == "volume" && i == len(tmpl)-1 {
				vars[name] = strings.Join(segs[i:], "/")
				return vars, true
			}
			if segs[i] == "" {
				return nil, false
			}
			vars[name] = segs[i]
			continue
		}
		if t != segs[i] {
			return nil, false
		}
	}
	if len(segs) != len(tmpl) {
		return nil, false
	}
	return vars, true
}
