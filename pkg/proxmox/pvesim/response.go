package pvesim

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// apiError is an error with PVE's HTTP status. PVE puts the message into the
// HTTP reason phrase (clients like go-proxmox only see res.Status for 500s),
// and also into the body's "message".
type apiError struct {
	status int
	msg    string
	// params are per-parameter errors (400 "Parameter verification failed.").
	params map[string]string
}

func (e *apiError) Error() string { return e.msg }

func errStatus(status int, format string, args ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

// errServer is PVE's generic "die" → 500 with the text.
func errServer(format string, args ...any) *apiError {
	return errStatus(http.StatusInternalServerError, format, args...)
}

func errParams(params map[string]string) *apiError {
	return &apiError{status: http.StatusBadRequest, msg: "Parameter verification failed.", params: params}
}

func errParam(name, format string, args ...any) *apiError {
	return errParams(map[string]string{name: fmt.Sprintf(format, args...)})
}

func errPerm(path, privs string) *apiError {
	if path == "" {
		return errStatus(http.StatusForbidden, "Permission check failed")
	}
	return errStatus(http.StatusForbidden, "Permission check failed (%s, %s)", path, privs)
}

func errNoVM(node string, vmid int) *apiError {
	return errServer("Configuration file 'nodes/%s/qemu-server/%d.conf' does not exist", node, vmid)
}

// writeData writes a successful {"data": ...} envelope. sent (if set) gets
// the body before it is written, so observers have it when the client does.
func writeData(w http.ResponseWriter, data any, sent func([]byte)) {
	body, err := json.Marshal(map[string]any{"data": data})
	if err != nil {
		writeError(w, errServer("internal error encoding response: %v", err))
		return
	}
	if sent != nil {
		sent(body)
	}
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Cache-Control", "max-age=0")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// statusDrop marks an error pveproxy never answers: the connection is closed
// without a response.
const statusDrop = -1

// writeError writes PVE's error shape with the message as reason phrase.
func writeError(w http.ResponseWriter, e *apiError) {
	if e.status == statusDrop {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return
			}
		}
		e = errStatus(http.StatusNotImplemented, "%s", e.msg)
	}
	body := map[string]any{"data": nil}
	if e.params != nil {
		body["errors"] = e.params
	}
	if e.msg != "" {
		body["message"] = e.msg + "\n"
	}
	b, _ := json.Marshal(body)
	writeWithReason(w, e.status, reasonPhrase(e.msg), b)
}

// reasonPhrase is the message's first line, like pve-http-server's
// response(): ($msg) = $msg =~ m/^(.*)$/m.
func reasonPhrase(msg string) string {
	msg, _, _ = strings.Cut(msg, "\n")
	msg = strings.TrimRight(msg, "\r")
	if strings.TrimSpace(msg) == "" {
		return "Error"
	}
	return msg
}

// writeWithReason sends a response with a custom reason phrase. net/http
// always writes the standard text, so the connection is hijacked; the
// response closes the connection (clients reconnect transparently).
func writeWithReason(w http.ResponseWriter, status int, reason string, body []byte) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		w.Header().Set("Content-Type", "application/json;charset=UTF-8")
		w.WriteHeader(status)
		_, _ = w.Write(body)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	writeRaw(rw.Writer, status, reason, body)
}

func writeRaw(bw *bufio.Writer, status int, reason string, body []byte) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", status, reason)
	fmt.Fprintf(bw, "Content-Type: application/json;charset=UTF-8\r\n")
	fmt.Fprintf(bw, "Content-Length: %d\r\n", len(body))
	fmt.Fprintf(bw, "Connection: close\r\n\r\n")
	_, _ = bw.Write(body)
	_ = bw.Flush()
}
