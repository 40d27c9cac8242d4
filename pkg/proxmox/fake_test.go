package proxmox

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testTokenID = "capi@pve!test"
	testSecret  = "0b7c5b1e-3c1d-4a53-9d3f-5ec2e1d4f00d"
)

// fakePVE is a tiny PVE stand-in on 127.0.0.1 for unit tests: routes are Go
// ServeMux patterns under /api2/json, it counts calls per pattern and
// measures in-flight requests globally and per node at the server.
type fakePVE struct {
	t   *testing.T
	srv *httptest.Server
	mux *http.ServeMux

	mu        sync.Mutex
	calls     map[string]int
	nodeCur   map[string]int
	nodeMax   map[string]int
	tasks     map[string]*fakeTask
	taskSeq   int
	inFlight  atomic.Int64
	maxFlight atomic.Int64
	// delay is added to every request (to make concurrency observable).
	delay time.Duration
}

type fakeTask struct {
	node, typ string
	polls     int // remaining "running" answers
	exit      string
	onDone    func()
	done      bool
}

func newFakePVE(t *testing.T) *fakePVE {
	f := &fakePVE{
		t:       t,
		mux:     http.NewServeMux(),
		calls:   map[string]int{},
		nodeCur: map[string]int{},
		nodeMax: map[string]int{},
		tasks:   map[string]*fakeTask{},
	}
	f.handle("GET /nodes/{node}/tasks/{upid}/status", f.taskStatus)
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakePVE) serve(w http.ResponseWriter, r *http.Request) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxFlight.Load()
		if n <= m || f.maxFlight.CompareAndSwap(m, n) {
			break
		}
	}
	node := nodeFromPath(strings.TrimPrefix(r.URL.Path, "/api2/json"))
	if node != "" {
		f.mu.Lock()
		f.nodeCur[node]++
		if f.nodeCur[node] > f.nodeMax[node] {
			f.nodeMax[node] = f.nodeCur[node]
		}
		f.mu.Unlock()
		defer func() {
			f.mu.Lock()
			f.nodeCur[node]--
			f.mu.Unlock()
		}()
	}
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	if r.Header.Get("Authorization") != "PVEAPIToken="+testTokenID+"="+testSecret {
		pveError(w, http.StatusUnauthorized, "authentication failure", nil)
		return
	}
	f.mux.ServeHTTP(w, r)
}

// handle registers "METHOD /path/{wild}" under /api2/json and counts calls.
func (f *fakePVE) handle(pattern string, h http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	f.mux.HandleFunc(method+" /api2/json"+path, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.calls[pattern]++
		f.mu.Unlock()
		h(w, r)
	})
}

func (f *fakePVE) count(pattern string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[pattern]
}

func (f *fakePVE) maxNode(node string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodeMax[node]
}

// newTask registers a task that answers "running" polls times, then stops
// with exit; onDone runs when it stops.
func (f *fakePVE) newTask(node, typ string, polls int, exit string, onDone func()) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.taskSeq++
	upid := fmt.Sprintf("UPID:%s:%08X:%08X:%08X:%s:%d:%s:", node, 1000+f.taskSeq, 42, time.Now().Unix(), typ, f.taskSeq, testTokenID)
	f.tasks[upid] = &fakeTask{node: node, typ: typ, polls: polls, exit: exit, onDone: onDone}
	return upid
}

func (f *fakePVE) taskStatus(w http.ResponseWriter, r *http.Request) {
	upid := r.PathValue("upid")
	f.mu.Lock()
	tk, ok := f.tasks[upid]
	if !ok {
		f.mu.Unlock()
		// pve-manager Tasks.pm: raise_param_exc({ upid => "no such task" }).
		pveError(w, http.StatusBadRequest, "Parameter verification failed.", map[string]string{"upid": "no such task"})
		return
	}
	status := "running"
	var exit string
	var done func()
	if tk.polls > 0 {
		tk.polls--
	} else {
		status, exit = "stopped", tk.exit
		if !tk.done {
			tk.done, done = true, tk.onDone
		}
	}
	f.mu.Unlock()
	if done != nil {
		done()
	}
	writeJSON(w, map[string]any{"status": status, "exitstatus": exit, "type": tk.typ, "node": tk.node, "upid": upid})
}

func (f *fakePVE) config(mods ...func(*Config)) Config {
	cfg := Config{
		URL:               f.srv.URL,
		TokenID:           testTokenID,
		TokenSecret:       testSecret,
		AllowInsecureHTTP: true,
		TaskPollInitial:   time.Millisecond,
		TaskPollMax:       5 * time.Millisecond,
		RequestTimeout:    5 * time.Second,
		TaskTimeout:       5 * time.Second,
		Retry:             RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond},
		Limits:            Limits{MaxInFlight: 16, MaxInFlightPerNode: 16, QPS: -1},
	}
	for _, m := range mods {
		m(&cfg)
	}
	return cfg
}

func (f *fakePVE) client(mods ...func(*Config)) *PVEClient {
	c, err := New(f.config(mods...))
	if err != nil {
		f.t.Fatalf("New: %v", err)
	}
	return c
}

func writeJSON(w http.ResponseWriter, data any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	_ = json.NewEncoder(w).Encode(map[string]any{"data": data})
}

// pveError answers like pveproxy: the message is the HTTP reason phrase and
// the body carries {"data":null,"message":...,"errors":...}. net/http cannot
// set a custom reason phrase, so the connection is hijacked.
func pveError(w http.ResponseWriter, status int, msg string, errs map[string]string) {
	body := map[string]any{"data": nil, "message": msg + "\n"}
	if errs != nil {
		body["errors"] = errs
	}
	b, _ := json.Marshal(body)
	hj, ok := w.(http.Hijacker)
	if !ok {
		w.WriteHeader(status)
		_, _ = w.Write(b)
		return
	}
	conn, bw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer func() { _ = conn.Close() }()
	reason := strings.ReplaceAll(msg, "\n", " ")
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", status, reason, len(b))
	_, _ = bw.Write(b)
	_ = bw.Flush()
}

// resetConn drops the connection without an answer (connection reset).
func resetConn(w http.ResponseWriter) {
	hj, _ := w.(http.Hijacker)
	conn, _, err := hj.Hijack()
	if err == nil {
		_ = conn.Close()
	}
}

// readParams decodes a JSON or form body (go-proxmox sends JSON) plus query.
func readParams(r *http.Request) map[string]string {
	out := map[string]string{}
	for k, v := range r.URL.Query() {
		out[k] = v[0]
	}
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/json"):
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		for k, v := range m {
			switch x := v.(type) {
			case string:
				out[k] = x
			case float64:
				out[k] = fmt.Sprintf("%v", x)
			default:
				b, _ := json.Marshal(x)
				out[k] = string(b)
			}
		}
	case strings.HasPrefix(ct, "application/x-www-form-urlencoded"):
		b, _ := io.ReadAll(r.Body)
		v, _ := url.ParseQuery(string(b))
		for k, vv := range v {
			out[k] = vv[0]
		}
	}
	return out
}
