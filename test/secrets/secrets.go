// Package secrets finds secret values where they must never be: in the logs, events and
// object status a run produced. The chaos run (test/chaos) and the e2e suite (test/e2e)
// read the secrets from the management API (the Proxmox token secret, bootstrap data with
// its Talos machine token and PKI keys, Talos PKI private keys, the Tailscale auth key) and
// scan everything they produced; any finding fails the run.
//
// A finding names where the value was seen and a fingerprint of the value (a short hash),
// never the value itself, so that reporting a leak does not leak it again.
package secrets

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Kinds of secret values.
const (
	KindProxmoxToken  = "proxmox-token-secret"
	KindBootstrapData = "bootstrap-data"
	KindPrivateKey    = "private-key"
	KindTailscaleKey  = "tailscale-auth-key"
)

// MinLength is the shortest value scanned for: shorter values (a port, "true") would match
// by chance.
const MinLength = 12

// Needle is one secret value to look for.
type Needle struct {
	Kind string
	// Source names where the value came from ("Secret ns/name key value"), for the report.
	Source string
	value  []byte
}

// NewNeedle makes a needle of a value (for values that are not in a Secret, e.g. a
// simulator's configured token).
func NewNeedle(kind, source string, value []byte) Needle {
	return Needle{Kind: kind, Source: source, value: append([]byte(nil), value...)}
}

// Fingerprint identifies the value without revealing it: the first 12 hex digits of its
// SHA-256.
func (n Needle) Fingerprint() string {
	sum := sha256.Sum256(n.value)
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// Finding is one occurrence of a secret value.
type Finding struct {
	Kind, Source, Fingerprint string
	// Where: "file <path>:<line>", "event <ns>/<name> <field>", "status <Kind> <ns>/<name>".
	Where string
	// Encoding is how the value appeared: "raw" or "base64".
	Encoding string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s value %s (from %s) found in %s (%s)", f.Kind, f.Fingerprint, f.Source, f.Where, f.Encoding)
}

// Scanner looks for a set of needles.
type Scanner struct {
	needles []Needle
	// patterns are the byte strings searched for, each with its needle and encoding.
	patterns []pattern
}

type pattern struct {
	needle   int
	encoding string
	b        []byte
}

// New returns a scanner for the needles (values shorter than MinLength are dropped,
// duplicates merged).
func New(needles []Needle) *Scanner {
	s := &Scanner{}
	seen := map[string]bool{}
	for _, n := range needles {
		v := bytes.TrimSpace(n.value)
		if len(v) < MinLength || seen[string(v)] {
			continue
		}
		seen[string(v)] = true
		n.value = v
		s.needles = append(s.needles, n)
		i := len(s.needles) - 1
		s.patterns = append(s.patterns, pattern{needle: i, encoding: "raw", b: v})
		// A Secret's data written somewhere as base64 (a dumped object, a logged []byte
		// marshalled to JSON) is a leak too. Aligned base64 of the value itself; values
		// embedded at another offset are not covered (the raw value usually sits nearby).
		s.patterns = append(s.patterns, pattern{needle: i, encoding: "base64", b: []byte(strings.TrimRight(base64.StdEncoding.EncodeToString(v), "="))})
	}
	return s
}

// Needles returns the needles the scanner looks for.
func (s *Scanner) Needles() []Needle { return append([]Needle(nil), s.needles...) }

// Kinds counts the needles by kind (to report what was scanned for).
func (s *Scanner) Kinds() map[string]int {
	out := map[string]int{}
	for _, n := range s.needles {
		out[n.Kind]++
	}
	return out
}

// ScanBytes reports every needle found in b, located as where.
func (s *Scanner) ScanBytes(where string, b []byte) []Finding {
	var out []Finding
	for _, p := range s.patterns {
		if bytes.Contains(b, p.b) {
			n := s.needles[p.needle]
			out = append(out, Finding{Kind: n.Kind, Source: n.Source, Fingerprint: n.Fingerprint(), Where: where, Encoding: p.encoding})
		}
	}
	return out
}

// ScanReader scans line by line (findings name the line).
func (s *Scanner) ScanReader(name string, r io.Reader) ([]Finding, error) {
	var out []Finding
	br := bufio.NewReaderSize(r, 1<<20)
	line := 0
	for {
		b, err := br.ReadBytes('\n')
		if len(b) > 0 {
			line++
			out = append(out, s.ScanBytes(fmt.Sprintf("file %s:%d", name, line), b)...)
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// ScanDir scans every regular file under dir whose name skip does not exclude (skip may be
// nil). Files that hold secrets on purpose (the kubeconfigs a lab writes, the manifests a
// test applies) must be skipped by the caller; logs never.
func (s *Scanner) ScanDir(dir string, skip func(rel string) bool) ([]Finding, int, error) {
	var out []Finding
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		if skip != nil && skip(rel) {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		files++
		found, err := s.ScanReader(rel, f)
		out = append(out, found...)
		return err
	})
	return out, files, err
}

// ScanEvents scans the message, reason and note of every Event (core/v1) in the API.
func (s *Scanner) ScanEvents(ctx context.Context, c client.Client) ([]Finding, int, error) {
	var list corev1.EventList
	if err := c.List(ctx, &list); err != nil {
		return nil, 0, fmt.Errorf("listing events: %w", err)
	}
	var out []Finding
	for _, e := range list.Items {
		where := fmt.Sprintf("event %s/%s (%s %s)", e.Namespace, e.Name, e.InvolvedObject.Kind, e.InvolvedObject.Name)
		b, err := json.Marshal(struct{ Reason, Message, Action, Note string }{e.Reason, e.Message, e.Action, e.Related.String()})
		if err != nil {
			return out, len(list.Items), err
		}
		out = append(out, s.ScanBytes(where, b)...)
	}
	return out, len(list.Items), nil
}

// ScanStatuses scans the .status of every object of the given kinds (all namespaces). A
// kind whose API is not served is skipped.
func (s *Scanner) ScanStatuses(ctx context.Context, c client.Client, kinds []schema.GroupVersionKind) ([]Finding, int, error) {
	var out []Finding
	objects := 0
	for _, gvk := range kinds {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
		if err := c.List(ctx, list); err != nil {
			// Not served (another lab, CRDs deleted by clusterctl delete --include-crd).
			if meta.IsNoMatchError(err) || apierrors.IsNotFound(err) || strings.Contains(err.Error(), "no matches for kind") {
				continue
			}
			return out, objects, fmt.Errorf("listing %s: %w", gvk.Kind, err)
		}
		for _, o := range list.Items {
			objects++
			out = append(out, s.ScanObjectStatus(gvk.Kind, o.Object)...)
		}
	}
	return out, objects, nil
}

// ScanObjectStatus scans one object's status (an unstructured object's content).
func (s *Scanner) ScanObjectStatus(kind string, obj map[string]any) []Finding {
	st, ok := obj["status"]
	if !ok {
		return nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil
	}
	meta, _ := obj["metadata"].(map[string]any)
	ns, _ := meta["namespace"].(string)
	name, _ := meta["name"].(string)
	return s.ScanBytes(fmt.Sprintf("status %s %s/%s", kind, ns, name), b)
}

// --- needles from Secrets ---

var (
	// Talos machine configuration keys whose values are secret.
	secretKeyName = regexp.MustCompile(`(?i)(token|secret|key|password)$`)
	tailscaleKey  = regexp.MustCompile(`tskey-[A-Za-z0-9_-]{8,}`)
)

// FromSecrets extracts the secret values of the Secrets: the Proxmox API token secret
// (credentialsKey), bootstrap data (every token, secret and key in the Talos machine
// configuration: a log of the whole document contains them), every PEM private key (raw or base64, in
// any key or YAML value: Talos PKI in bootstrap data and talosconfigs, kubeconfig client
// keys), and Tailscale auth keys (tskey-...).
func FromSecrets(list []corev1.Secret, credentialsKey string) []Needle {
	var out []Needle
	for _, sec := range list {
		for key, val := range sec.Data {
			src := fmt.Sprintf("Secret %s/%s key %s", sec.Namespace, sec.Name, key)
			if key == credentialsKey {
				out = append(out, NewNeedle(KindProxmoxToken, src, val))
				continue
			}
			out = append(out, fromValue(src, val)...)
		}
	}
	return out
}

func fromValue(src string, val []byte) []Needle {
	var out []Needle
	out = append(out, privateKeys(src, val)...)
	for _, k := range tailscaleKey.FindAll(val, -1) {
		out = append(out, NewNeedle(KindTailscaleKey, src, k))
	}
	if !isTalosConfig(val) {
		return out
	}
	// Bootstrap data (or extra Talos documents): every secret-named value.
	dec := yaml.NewDecoder(bytes.NewReader(val))
	for {
		var doc any
		if err := dec.Decode(&doc); err != nil {
			break
		}
		walk(doc, "", func(path, v string) {
			leaf := path[strings.LastIndex(path, ".")+1:]
			switch {
			case strings.Contains(v, "TS_AUTHKEY=") || strings.HasPrefix(v, "tskey-"):
				if _, k, ok := strings.Cut(v, "TS_AUTHKEY="); ok {
					v = k
				}
				out = append(out, NewNeedle(KindTailscaleKey, src+" "+path, []byte(v)))
			case secretKeyName.MatchString(leaf):
				out = append(out, NewNeedle(KindBootstrapData, src+" "+path, []byte(v)))
				out = append(out, privateKeys(src+" "+path, []byte(v))...)
			}
		})
	}
	return out
}

// isTalosConfig tells Talos machine configuration (bootstrap data, extra documents) from
// other data.
func isTalosConfig(b []byte) bool {
	return bytes.Contains(b, []byte("version: v1alpha1")) || bytes.Contains(b, []byte("apiVersion: v1alpha1"))
}

func walk(v any, path string, f func(path, v string)) {
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			walk(t[k], path+"."+k, f)
		}
	case []any:
		for i, e := range t {
			walk(e, fmt.Sprintf("%s[%d]", path, i), f)
		}
	case string:
		f(path, t)
	}
}

// privateKeys finds PEM private keys in b, raw or base64-encoded (as Talos and kubeconfigs
// store them), and returns needles for the key material: the base64 body of the PEM block
// (as it would appear in a log of the PEM) and its DER (as bytes).
func privateKeys(src string, b []byte) []Needle {
	var out []Needle
	add := func(p []byte) bool {
		found := false
		for {
			var block *pem.Block
			block, p = pem.Decode(p)
			if block == nil {
				return found
			}
			if !strings.Contains(block.Type, "PRIVATE KEY") {
				continue
			}
			found = true
			body := base64.StdEncoding.EncodeToString(block.Bytes)
			// PEM wraps at 64 columns: the first line is what a log of the PEM shows verbatim.
			out = append(out, NewNeedle(KindPrivateKey, src, []byte(body[:min(64, len(body))])))
		}
	}
	add(b)
	// base64 of a PEM: "LS0tLS1CRUdJTi" is "-----BEGIN".
	for _, m := range regexp.MustCompile(`LS0tLS1CRUdJTi[A-Za-z0-9+/=]+`).FindAll(b, -1) {
		if dec, err := base64.StdEncoding.DecodeString(string(m)); err == nil && add(dec) {
			out = append(out, NewNeedle(KindPrivateKey, src+" (base64 PEM)", m[:min(len(m), 96)]))
		}
	}
	return out
}

// StatusKinds are the provider's and Cluster API's objects whose status a scan reads (kinds
// whose API is not served are skipped).
var StatusKinds = []schema.GroupVersionKind{
	{Group: "infrastructure.cluster.x-k8s.io", Version: "v1beta1", Kind: "ProxmoxTalosMachine"},
	{Group: "infrastructure.cluster.x-k8s.io", Version: "v1beta1", Kind: "ProxmoxTalosCluster"},
	{Group: "infrastructure.cluster.x-k8s.io", Version: "v1beta1", Kind: "ProxmoxTalosMachineTemplate"},
	{Group: "infrastructure.cluster.x-k8s.io", Version: "v1beta1", Kind: "ProxmoxTalosClusterTemplate"},
	{Group: "cluster.x-k8s.io", Version: "v1beta2", Kind: "Cluster"},
	{Group: "cluster.x-k8s.io", Version: "v1beta2", Kind: "Machine"},
	{Group: "cluster.x-k8s.io", Version: "v1beta2", Kind: "MachineSet"},
	{Group: "cluster.x-k8s.io", Version: "v1beta2", Kind: "MachineDeployment"},
	{Group: "cluster.x-k8s.io", Version: "v1beta2", Kind: "MachineHealthCheck"},
	{Group: "bootstrap.cluster.x-k8s.io", Version: "v1alpha3", Kind: "TalosConfig"},
	{Group: "controlplane.cluster.x-k8s.io", Version: "v1alpha3", Kind: "TalosControlPlane"},
	{Group: "ipam.cluster.x-k8s.io", Version: "v1beta2", Kind: "IPAddress"},
	{Group: "ipam.cluster.x-k8s.io", Version: "v1beta2", Kind: "IPAddressClaim"},
}

// ReadNeedles reads the secret values of every Secret of the management API (see
// FromSecrets). Bootstrap data and PKI Secrets go with their cluster: read them while the
// cluster exists and pass them to Scan later.
func ReadNeedles(ctx context.Context, c client.Client, credentialsKey string) ([]Needle, error) {
	var list corev1.SecretList
	if err := c.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing secrets: %w", err)
	}
	return FromSecrets(list.Items, credentialsKey), nil
}

// OnlyLogs is a ScanDir skip function that scans *.log files only: the other artifacts
// (kubeconfigs, manifests, PKI) hold secrets on purpose.
func OnlyLogs(rel string) bool { return !strings.HasSuffix(rel, ".log") }

// Scan reads every Secret from the management API, then scans the files under dir (skip
// excludes files that hold secrets on purpose), every Event and the status of every object
// of kinds. extra are needles not held in a Secret. A failed listing is an error (a scan
// that could not look is not a clean scan).
func Scan(ctx context.Context, c client.Client, credentialsKey, dir string, skip func(string) bool, kinds []schema.GroupVersionKind, extra ...Needle) (Report, error) {
	needles, err := ReadNeedles(ctx, c, credentialsKey)
	if err != nil {
		return Report{}, err
	}
	s := New(append(needles, extra...))
	rep := Report{Needles: s.Kinds()}
	if dir != "" {
		f, n, err := s.ScanDir(dir, skip)
		if err != nil {
			return rep, err
		}
		rep.Files, rep.Findings = n, append(rep.Findings, f...)
	}
	f, n, err := s.ScanEvents(ctx, c)
	if err != nil {
		return rep, err
	}
	rep.Events, rep.Findings = n, append(rep.Findings, f...)
	f, n, err = s.ScanStatuses(ctx, c, kinds)
	if err != nil {
		return rep, err
	}
	rep.Objects, rep.Findings = n, append(rep.Findings, f...)
	return rep, nil
}

// Report is the result of one scan, for a run's summary.
type Report struct {
	Needles  map[string]int
	Files    int
	Events   int
	Objects  int
	Findings []Finding
}

// String summarizes the report; findings are listed without the values.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "secret scan: %d files, %d events, %d object statuses scanned for", r.Files, r.Events, r.Objects)
	for _, k := range sortedKeys(r.Needles) {
		fmt.Fprintf(&b, " %d %s", r.Needles[k], k)
	}
	fmt.Fprintf(&b, "; %d findings", len(r.Findings))
	for i, f := range r.Findings {
		if i == 50 {
			fmt.Fprintf(&b, "\n  … and %d more", len(r.Findings)-50)
			break
		}
		fmt.Fprintf(&b, "\n  - %s", f)
	}
	return b.String()
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
