package talossim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// manifestApplyTimeout bounds how long the bootstrap manifests are retried (CRDs must be
// established before their objects apply).
const manifestApplyTimeout = 2 * time.Minute

// manifestSource is one bootstrap manifest: inline contents or a URL to fetch.
type manifestSource struct {
	name     string
	contents string
	url      string
	headers  map[string]string
}

// bootstrapManifests are what a control plane's Talos applies to its cluster once the API
// server answers: cluster.inlineManifests and cluster.extraManifests, in that order.
type bootstrapManifests struct {
	sources []manifestSource
}

func manifestsFrom(cfg config.Provider) *bootstrapManifests {
	m := &bootstrapManifests{}
	for _, im := range cfg.K8sInlineManifestConfigs() {
		m.sources = append(m.sources, manifestSource{name: im.Name(), contents: im.Contents()})
	}
	for _, em := range cfg.K8sExternalManifestConfigs() {
		m.sources = append(m.sources, manifestSource{name: em.URL(), url: em.URL(), headers: em.Headers()})
	}
	return m
}

// localURL reports whether the lab may fetch u: only loopback hosts (NETWORK RULE).
func localURL(u string) bool {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") {
		return false
	}
	if p.Hostname() == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(p.Hostname())
	return err == nil && a.IsLoopback()
}

// fetch reads a local extraManifest, with its headers, as Talos downloads it.
func fetch(ctx context.Context, src manifestSource) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range src.headers {
		req.Header.Set(k, v)
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		// Loopback only, even after redirects.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
				return nil, fmt.Errorf("refusing to dial %s: the lab only reaches 127.0.0.0/8", addr)
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET: %s", resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// decodeManifest splits a multi-document manifest into objects (empty documents skipped).
func decodeManifest(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, errors.New("document without apiVersion or kind")
		}
		out = append(out, u)
	}
}

// applyRank orders objects as Talos' manifest applier does: namespaces, then CRDs, then the
// rest in manifest order, so objects find their namespace and kind.
func applyRank(u *unstructured.Unstructured) int {
	switch u.GetKind() {
	case "Namespace":
		return 0
	case "CustomResourceDefinition":
		return 1
	}
	return 2
}

// applyBootstrapManifests applies the manifests to the workload API server the way Talos'
// bootstrap manifests land: each object created when missing, an existing object left alone
// (Talos does not overwrite what is already in the cluster; `talosctl upgrade-k8s` syncs
// later changes). Unknown kinds are retried until their CRDs are served.
func (c *cluster) applyBootstrapManifests(ctx context.Context, cfg *rest.Config, m *bootstrapManifests) error {
	var objs []*unstructured.Unstructured
	for _, src := range m.sources {
		data := []byte(src.contents)
		if src.url != "" {
			if !localURL(src.url) {
				c.sim.logf("cluster %s: extraManifest %s not fetched: the lab only reaches loopback URLs", c.name, src.url)
				continue
			}
			var err error
			if data, err = fetch(ctx, src); err != nil {
				return fmt.Errorf("extraManifest %s: %w", src.url, err)
			}
		}
		docs, err := decodeManifest(data)
		if err != nil {
			return fmt.Errorf("manifest %q: %w", src.name, err)
		}
		objs = append(objs, docs...)
	}
	if len(objs) == 0 {
		return nil
	}
	sort.SliceStable(objs, func(i, j int) bool { return applyRank(objs[i]) < applyRank(objs[j]) })

	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	cached := memory.NewMemCacheClient(dc)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)

	deadline := time.Now().Add(manifestApplyTimeout)
	pending := objs
	created := 0
	for {
		var retry []*unstructured.Unstructured
		var lastErr error
		for _, o := range pending {
			ok, err := createIfMissing(ctx, dyn, mapper, o)
			if err != nil {
				retry, lastErr = append(retry, o), err
				continue
			}
			if ok {
				created++
			}
		}
		if len(retry) == 0 {
			c.sim.logf("cluster %s: bootstrap manifests applied (%d objects, %d created)", c.name, len(objs), created)
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("%d of %d objects not applied: %w", len(retry), len(objs), lastErr)
		}
		pending = retry
		cached.Invalidate()
		mapper.Reset()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// createIfMissing creates o unless it exists; created reports whether it did.
func createIfMissing(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, o *unstructured.Unstructured) (created bool, err error) {
	gvk := o.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", gvk.Kind, o.GetName(), err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := o.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		ri = dyn.Resource(mapping.Resource).Namespace(ns)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = ri.Create(cctx, o, metav1.CreateOptions{FieldManager: "talos"})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsAlreadyExists(err):
		return false, nil
	default:
		return false, fmt.Errorf("%s %s/%s: %w", gvk.Kind, o.GetNamespace(), o.GetName(), err)
	}
}
