package workload

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"sigs.k8s.io/cluster-api/util/secret"
)

// apiServer is a workload API server that serves Nodes and records every path asked.
type apiServer struct {
	*httptest.Server
	mu           sync.Mutex
	paths        []string
	unauthorized bool
}

func newAPIServer(t *testing.T) *apiServer {
	s := &apiServer{}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.paths = append(s.paths, r.URL.Path)
		unauthorized := s.unauthorized
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if unauthorized {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Code: 401, Reason: metav1.StatusReasonUnauthorized})
			return
		}
		switch r.URL.Path {
		case "/api/v1/nodes/w-0":
			_ = json.NewEncoder(w).Encode(corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "w-0"}})
		default:
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Code: 404, Reason: metav1.StatusReasonNotFound})
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) asked() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...)
}

// countingReader counts the kubeconfig Secret reads.
type countingReader struct {
	client.Reader
	mu    sync.Mutex
	reads int
}

func (c *countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.Reader.Get(ctx, key, obj, opts...)
}

func (c *countingReader) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

func kubeconfigSecret(t *testing.T, cluster client.ObjectKey, server *httptest.Server) *corev1.Secret {
	t.Helper()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw})
	data, err := clientcmd.Write(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"c": {Server: server.URL, CertificateAuthorityData: ca}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"admin": {Token: "not-a-real-token"}},
		Contexts:       map[string]*clientcmdapi.Context{"c": {Cluster: "c", AuthInfo: "admin"}},
		CurrentContext: "c",
	})
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: cluster.Namespace, Name: secret.Name(cluster.Name, secret.Kubeconfig)},
		Data:       map[string][]byte{secret.KubeconfigDataName: data},
	}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newAccess(t *testing.T, objs ...client.Object) (*Access, *countingReader, *clock) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	secrets := &countingReader{Reader: fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()}
	clk := &clock{t: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	a := New(secrets, scheme, Options{UserAgent: "test", Timeout: 2 * time.Second})
	a.now = clk.now
	return a, secrets, clk
}

// TestNodesWithoutDiscovery: the workload client reads Nodes without asking the API server
// for its discovery documents (which the dynamic REST mapper would fetch and keep whole),
// and one connection serves every pass until it is refreshed.
func TestNodesWithoutDiscovery(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	key := client.ObjectKey{Namespace: "ns", Name: "c1"}
	srv := newAPIServer(t)
	a, secrets, clk := newAccess(t, kubeconfigSecret(t, key, srv.Server))

	for range 3 {
		wc, err := a.Client(ctx, key)
		g.Expect(err).NotTo(HaveOccurred())
		var node corev1.Node
		g.Expect(wc.Get(ctx, client.ObjectKey{Name: "w-0"}, &node)).To(Succeed())
		g.Expect(node.Name).To(Equal("w-0"))
		err = wc.Get(ctx, client.ObjectKey{Name: "w-1"}, &node)
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a Node that is not there is NotFound, got %v", err)
		g.Expect(IsUnreachable(err)).To(BeFalse())
	}
	g.Expect(srv.asked()).To(HaveEach(HavePrefix("/api/v1/nodes/")), "no discovery request (/api, /apis)")
	g.Expect(secrets.count()).To(Equal(1), "one kubeconfig read for the connection's life")

	clk.t = clk.t.Add(6 * time.Minute) // past Refresh: the kubeconfig is read again
	_, err := a.Client(ctx, key)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(secrets.count()).To(Equal(2))

	clk.t = clk.t.Add(6 * time.Minute) // unused past IdleAfter: dropped at the next sweep
	_, err = a.Client(ctx, client.ObjectKey{Namespace: "ns", Name: "other"})
	g.Expect(err).To(MatchError(ErrUnreachable))
	g.Expect(a.Connections()).To(Equal(0), "idle connections are dropped")
}

// TestUnreachableFailsFast: before the kubeconfig exists and while the API server does not
// answer, Client says so with ErrUnreachable; after a failed request it fails at once, with
// the same message, until RetryAfter has passed, so waiting machines neither hold workers
// for timeouts nor change their condition message on every pass.
func TestUnreachableFailsFast(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	key := client.ObjectKey{Namespace: "ns", Name: "c1"}

	a, _, _ := newAccess(t)
	_, err := a.Client(ctx, key)
	g.Expect(err).To(MatchError(ErrUnreachable))
	g.Expect(err.Error()).To(ContainSubstring("kubeconfig Secret c1-kubeconfig does not exist yet"))
	g.Expect(IsUnreachable(err)).To(BeTrue())

	srv := newAPIServer(t)
	a, secrets, clk := newAccess(t, kubeconfigSecret(t, key, srv.Server))
	wc, err := a.Client(ctx, key)
	g.Expect(err).NotTo(HaveOccurred())
	srv.Close() // the API server goes away
	var node corev1.Node
	first := wc.Get(ctx, client.ObjectKey{Name: "w-0"}, &node)
	g.Expect(first).To(MatchError(ErrUnreachable))
	g.Expect(IsUnreachable(first)).To(BeTrue())

	clk.t = clk.t.Add(5 * time.Second)
	_, again := a.Client(ctx, key)
	g.Expect(again).To(MatchError(ErrUnreachable))
	g.Expect(again.Error()).To(Equal(first.Error()), "the same message while failing fast")

	clk.t = clk.t.Add(6 * time.Second) // past RetryAfter: a new attempt (from a new kubeconfig read)
	reads := secrets.count()
	wc, err = a.Client(ctx, key)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(secrets.count()).To(Equal(reads + 1))
	g.Expect(wc.Get(ctx, client.ObjectKey{Name: "w-0"}, &node)).To(MatchError(ErrUnreachable))
}

// TestUnauthorizedRereadsKubeconfig: a rejected credential drops the connection, so the next
// pass builds one from the (possibly rotated) kubeconfig Secret; the error itself is the
// server's answer, not unreachability.
func TestUnauthorizedRereadsKubeconfig(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	key := client.ObjectKey{Namespace: "ns", Name: "c1"}
	srv := newAPIServer(t)
	a, secrets, _ := newAccess(t, kubeconfigSecret(t, key, srv.Server))

	wc, err := a.Client(ctx, key)
	g.Expect(err).NotTo(HaveOccurred())
	srv.mu.Lock()
	srv.unauthorized = true
	srv.mu.Unlock()
	var node corev1.Node
	err = wc.Get(ctx, client.ObjectKey{Name: "w-0"}, &node)
	g.Expect(apierrors.IsUnauthorized(err)).To(BeTrue(), "%v", err)
	g.Expect(IsUnreachable(err)).To(BeFalse())
	g.Expect(err.Error()).NotTo(ContainSubstring("not-a-real-token"))

	_, err = a.Client(ctx, key)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(secrets.count()).To(Equal(2), "the kubeconfig is read again after Unauthorized")
}

// TestUnreachable tells the errors a machine waits on (no answer from the API server, or an
// answer from something in front of it) from those the API server gave about the object.
func TestUnreachable(t *testing.T) {
	gr := schema.GroupResource{Resource: "nodes"}
	tests := []struct {
		name       string
		err        error
		wantReason string
		want       bool
	}{
		{"nil", nil, "", false},
		{"canceled", fmt.Errorf("get: %w", context.Canceled), "", false},
		{"not found", apierrors.NewNotFound(gr, "w-0"), "", false},
		{"forbidden", apierrors.NewForbidden(gr, "w-0", errors.New("RBAC")), "", false},
		{"no kind match", &meta.NoKindMatchError{GroupKind: schema.GroupKind{Kind: "Pod"}}, "", false},
		{"service unavailable", apierrors.NewServiceUnavailable("starting"), "starting", true},
		{"unreachable", fmt.Errorf("wrapped: %w", &UnreachableError{Reason: "no kubeconfig"}), "no kubeconfig", true},
		{"transport", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), "dial tcp 127.0.0.1:1: connect: connection refused", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			reason, ok := Unreachable(tt.err)
			g.Expect(ok).To(Equal(tt.want))
			g.Expect(reason).To(ContainSubstring(tt.wantReason))
			g.Expect(IsUnreachable(tt.err)).To(Equal(tt.want))
			if ok {
				g.Expect(errors.Is(&UnreachableError{Reason: reason}, ErrUnreachable)).To(BeTrue())
			}
		})
	}
}
