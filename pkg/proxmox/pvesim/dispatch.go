package pvesim

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// serveHTTP runs PVE's request pipeline: auth → permission check → proxy to
// node (595 if offline) → parameter verification → handler.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	path, ok := strings.CutPrefix(r.URL.Path, apiPrefix)
	if !ok {
		writeError(w, errStatus(http.StatusNotImplemented, "Method '%s %s' not implemented", r.Method, r.URL.Path))
		return
	}
	rt, vars := s.match(r.Method, path)
	if rt == nil {
		writeError(w, errStatus(http.StatusNotImplemented, "Method '%s %s' not implemented", r.Method, path))
		return
	}
	node := vars["node"]
	done := s.metrics.begin(r.Method+" "+rt.template, node)
	defer done()

	isUpload := rt.method == http.MethodPost && rt.template == "/nodes/{node}/storage/{storage}/upload"
	// pveproxy refuses a Transfer-Encoding before authenticating.
	if len(r.TransferEncoding) > 0 {
		writeError(w, checkRequestBody(r, isUpload))
		return
	}
	c := &reqCtx{s: s, r: r, route: rt}
	if e := c.authenticate(); e != nil {
		writeError(w, e)
		return
	}
	if e := s.injectRequestFault(r.Method, rt.template, node); e != nil {
		writeError(w, e)
		return
	}
	if e := checkRequestBody(r, isUpload); e != nil {
		writeError(w, e)
		return
	}
	params, upload, e := readParams(r, isUpload)
	if e != nil {
		writeError(w, e)
		return
	}
	for k, v := range vars {
		params[k] = v
	}
	c.params = params
	c.upload = upload

	if e := c.checkRoutePermissions(); e != nil {
		writeError(w, e)
		return
	}
	if node != "" {
		if e := s.checkNodeReachable(node); e != nil {
			writeError(w, e)
			return
		}
		if e := s.injectProxyFault(r.Method, rt, node); e != nil {
			writeError(w, e)
			return
		}
	}
	if e := c.validate(); e != nil {
		writeError(w, e)
		return
	}
	// qemu-server: raise_param_exc({ skiplock => "Only root may use this
	// option." }) if $skiplock && $authuser ne 'root@pam'. pvesim
	// authenticates API tokens only, and a token (even root@pam!x) is never
	// the user root@pam.
	if isTrue(c.params["skiplock"]) {
		writeError(w, errParam("skiplock", "Only root may use this option."))
		return
	}
	data, e := rt.handler(c)
	if e != nil {
		writeError(w, e)
		return
	}
	writeData(w, data, func(body []byte) {
		s.fireResponse(ResponseRecord{Method: rt.method, Route: rt.template, Status: http.StatusOK, Body: body})
	})
}

// checkNodeReachable models pveproxy forwarding a call to the node that
// serves it (proxyto): an unknown node fails the hostname lookup; a node
// that is down answers 595 "No route to host" once ARP resolution gives up
// (OfflineDelay); a node whose pveproxy is stopped refuses the connection at
// once (595 "Connection refused"). The reason phrase is AnyEvent::HTTP's
// error text, which pveproxy passes through.
func (s *Server) checkNodeReachable(node string) *apiError {
	s.mu.Lock()
	n, ok := s.nodes[node]
	online := ok && n.online
	proxyDown := ok && n.proxyDown
	if ok && (!online || proxyDown) {
		s.countFault(FaultNodeUnreachable)
	}
	s.mu.Unlock()
	if !ok {
		return errServer("hostname lookup '%s' failed - failed to get address info for: %s: Name or service not known", node, node)
	}
	if !online {
		s.sleep(time.Duration(s.cfg.OfflineDelay))
		return errStatus(595, "No route to host")
	}
	if proxyDown {
		return errStatus(595, "Connection refused")
	}
	return nil
}

// authenticate accepts only API tokens: "PVEAPIToken=USER@REALM!TOKENID=SECRET".
func (c *reqCtx) authenticate() *apiError {
	h := c.r.Header.Get("Authorization")
	if h == "" {
		return errStatus(http.StatusUnauthorized, "No ticket")
	}
	v, ok := strings.CutPrefix(h, "PVEAPIToken=")
	if !ok {
		v, ok = strings.CutPrefix(h, "PVEAPIToken ")
	}
	if !ok {
		return errStatus(http.StatusUnauthorized, "No ticket")
	}
	id, secret, ok := strings.Cut(v, "=")
	if !ok {
		return errStatus(http.StatusUnauthorized, "invalid token value!")
	}
	tok, ok := c.s.tokens[strings.TrimSpace(id)]
	// Never echo the secret; compare in constant time.
	if !ok || subtle.ConstantTimeCompare([]byte(tok.Secret), []byte(strings.TrimSpace(secret))) != 1 {
		return errStatus(http.StatusUnauthorized, "authentication failure")
	}
	c.token = tok.ID
	return nil
}

// readParams merges query string and body (form, JSON or multipart) into
// PVE's flat string parameters.
func readParams(r *http.Request, isUpload bool) (map[string]string, *uploadFile, *apiError) {
	params := map[string]string{}
	for k, vs := range r.URL.Query() {
		if len(vs) > 0 {
			params[k] = vs[len(vs)-1]
		}
	}
	// Without Content-Length pveproxy handles the request without a body.
	if r.Body == nil || r.ContentLength <= 0 || r.Method == http.MethodGet || r.Method == http.MethodDelete {
		return params, nil, nil
	}
	if isUpload {
		if _, ok := params["tmpfilename"]; ok {
			return nil, nil, errParam("tmpfilename", "tmpfilename is only allowed on the trusted localhost port")
		}
		_, boundary := parseContentType(r.Header.Get("Content-Type"))
		mu, e := readMultipartUpload(r.Body, boundary)
		if e != nil {
			return nil, nil, e
		}
		for k, v := range mu.params {
			params[k] = v
		}
		tmp := fmt.Sprintf("/var/tmp/pveupload-%s", mu.sink.digest()[:32])
		params["filename"] = mu.filename
		params["tmpfilename"] = tmp
		return params, &uploadFile{name: mu.filename, sink: mu.sink, tmpfilename: tmp}, nil
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			return nil, nil, errStatus(http.StatusBadRequest, "unable to read request body: %v", err)
		}
		if len(strings.TrimSpace(string(body))) == 0 {
			return params, nil, nil
		}
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.UseNumber()
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			return nil, nil, errStatus(http.StatusBadRequest, "malformed JSON string: %v", err)
		}
		for k, v := range m {
			switch t := v.(type) {
			case nil:
			case string:
				params[k] = t
			case json.Number:
				params[k] = t.String()
			case bool:
				params[k] = map[bool]string{true: "1", false: "0"}[t]
			default:
				b, _ := json.Marshal(t)
				params[k] = string(b)
			}
		}
	default:
		if err := r.ParseForm(); err != nil {
			return nil, nil, errStatus(http.StatusBadRequest, "unable to parse form: %v", err)
		}
		for k, vs := range r.PostForm {
			if len(vs) > 0 {
				params[k] = vs[len(vs)-1]
			}
		}
	}
	return params, nil, nil
}

func (c *reqCtx) intParam(name string) int {
	n, _ := strconv.Atoi(c.params[name])
	return n
}

func (c *reqCtx) boolParam(name string) bool { return isTrue(c.params[name]) }

func (c *reqCtx) node() string { return c.params["node"] }

func splitList(s string) []string {
	var out []string
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ';' || r == ' ' }) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}
