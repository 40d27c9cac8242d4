package pvesim

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func startSim(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

type resp struct {
	status int
	reason string
	body   map[string]any
}

// call sends a form-encoded request with a token.
func call(t *testing.T, s *Server, token, method, path string, form url.Values) resp {
	t.Helper()
	var body io.Reader
	u := s.URL() + path
	if form != nil && (method == "POST" || method == "PUT") {
		body = strings.NewReader(form.Encode())
	} else if form != nil {
		u += "?" + form.Encode()
	}
	req, _ := http.NewRequest(method, u, body)
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if token != "" {
		req.Header.Set("Authorization", "PVEAPIToken="+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	r := resp{status: res.StatusCode, reason: strings.TrimPrefix(res.Status, res.Status[:4])}
	_ = json.Unmarshal(b, &r.body)
	return r
}

const rootTok = DefaultTokenID + "=" + DefaultTokenSecret

func root(t *testing.T, s *Server, method, path string, form url.Values) resp {
	t.Helper()
	return call(t, s, rootTok, method, path, form)
}

// waitTask polls a UPID until it stops and returns its exitstatus.
func waitTask(t *testing.T, s *Server, node string, r resp) string {
	t.Helper()
	g := NewWithT(t)
	g.Expect(r.status).To(Equal(200), "reason: %s", r.reason)
	upid, _ := r.body["data"].(string)
	g.Expect(upid).To(HavePrefix("UPID:" + node + ":"))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		st := root(t, s, "GET", "/nodes/"+node+"/tasks/"+url.PathEscape(upid)+"/status", nil)
		d := st.body["data"].(map[string]any)
		if d["status"] == "stopped" {
			return d["exitstatus"].(string)
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("task %s did not finish", upid)
	return ""
}

func form(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

func qcow2Image(virtualSize uint64) []byte {
	b := make([]byte, 512)
	copy(b, "QFI\xfb")
	for i := 0; i < 8; i++ {
		b[24+i] = byte(virtualSize >> (56 - 8*i))
	}
	return b
}
