package main

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/component-base/logs"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/flags"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
)

// freeLoopbackPort returns a port that was free on 127.0.0.1 a moment ago.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestManagerWiring runs the real manager entry point against a real API server: its
// webhooks must answer (defaults applied on create) and its controllers must reconcile
// (the cluster finalizer appears), and it must stop cleanly when its context ends.
func TestManagerWiring(t *testing.T) {
	g := NewWithT(t)
	env, err := testenv.New(testenv.Options{Webhooks: true})
	g.Expect(err).NotTo(HaveOccurred())
	cfg, err := env.Start()
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = env.Stop() }()

	// The manager loads its kubeconfig the usual way.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"env": {Server: cfg.Host, CertificateAuthorityData: cfg.CAData}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"env": {ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}},
		Contexts:       map[string]*clientcmdapi.Context{"env": {Cluster: "env", AuthInfo: "env"}},
		CurrentContext: "env",
	}, kubeconfig)).To(Succeed())
	t.Setenv("KUBECONFIG", kubeconfig)

	wh := env.WebhookInstallOptions
	healthPort := freeLoopbackPort(t)
	o := &options{
		syncPeriod:            time.Minute,
		kubeAPIQPS:            50,
		kubeAPIBurst:          100,
		workloadClientQPS:     20,
		workloadClientBurst:   30,
		clusterConcurrency:    1,
		machineConcurrency:    1,
		webhookPort:           wh.LocalServingPort,
		webhookCertDir:        wh.LocalServingCertDir,
		webhookCertName:       "tls.crt",
		webhookKeyName:        "tls.key",
		healthAddr:            "127.0.0.1:" + strconv.Itoa(healthPort),
		proxmoxRequestTimeout: 5 * time.Second,
		managerOptions:        flags.ManagerOptions{DiagnosticsAddress: "0"},
		logOptions:            logs.NewOptions(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	defer func() {
		cancel()
		g.Eventually(done, 30*time.Second).Should(Receive(BeNil()))
	}()

	c, err := client.New(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())

	cluster := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: "wiring", Namespace: "default"},
		Spec: clusterv1.ClusterSpec{InfrastructureRef: clusterv1.ContractVersionedObjectReference{
			APIGroup: infrav1.GroupVersion.Group, Kind: "ProxmoxTalosCluster", Name: "wiring",
		}},
	}
	g.Expect(c.Create(ctx, cluster)).To(Succeed())
	g.Expect(c.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "wiring-proxmox", Namespace: "default"},
		StringData: map[string]string{infrav1.CredentialsTokenIDKey: "capi@pve!wiring", infrav1.CredentialsTokenSecretKey: "not-a-real-secret"},
	})).To(Succeed())

	infra := &infrav1.ProxmoxTalosCluster{
		ObjectMeta: metav1.ObjectMeta{
			Name: "wiring", Namespace: "default",
			Labels: map[string]string{clusterv1.ClusterNameLabel: "wiring"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: clusterv1.GroupVersion.String(), Kind: "Cluster", Name: "wiring", UID: cluster.UID,
			}},
		},
		Spec: infrav1.ProxmoxTalosClusterSpec{
			// A closed loopback port: the preflight fails, which is what the reconciler reports.
			Proxmox:              infrav1.ProxmoxAPI{URL: "https://127.0.0.1:" + strconv.Itoa(freeLoopbackPort(t)), CredentialsRef: infrav1.SecretReference{Name: "wiring-proxmox"}},
			ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: "127.10.3.1"},
			Talos:                infrav1.TalosImageSpec{Version: "v1.13.9"},
		},
	}
	// The webhook server may still be starting: retry the create until it answers.
	g.Eventually(func() error { return c.Create(ctx, infra) }, 30*time.Second, 200*time.Millisecond).Should(Succeed())
	g.Expect(infra.Spec.ControlPlaneEndpoint.Port).To(Equal(int32(6443)), "the defaulting webhook ran")

	g.Eventually(func(g Gomega) {
		got := &infrav1.ProxmoxTalosCluster{}
		g.Expect(c.Get(ctx, client.ObjectKeyFromObject(infra), got)).To(Succeed())
		g.Expect(got.Finalizers).To(ContainElement(infrav1.ClusterFinalizer), "the cluster controller reconciled")
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed())

	// The template controller is wired too: a worker template of the cluster publishes its
	// capacity for the cluster autoscaler (scale from zero).
	tmpl := &infrav1.ProxmoxTalosMachineTemplate{
		ObjectMeta: metav1.ObjectMeta{
			Name: "wiring-workers", Namespace: "default",
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: clusterv1.GroupVersion.String(), Kind: "Cluster", Name: "wiring", UID: cluster.UID,
			}},
		},
		Spec: infrav1.ProxmoxTalosMachineTemplateSpec{Template: infrav1.ProxmoxTalosMachineTemplateResource{
			Spec: infrav1.ProxmoxTalosMachineSpec{Cores: 3, MemoryMiB: 6144},
		}},
	}
	g.Expect(c.Create(ctx, tmpl)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got := &infrav1.ProxmoxTalosMachineTemplate{}
		g.Expect(c.Get(ctx, client.ObjectKeyFromObject(tmpl), got)).To(Succeed())
		g.Expect(got.Status.Capacity.Cpu().String()).To(Equal("3"))
		g.Expect(got.Status.Capacity.Memory().String()).To(Equal("6Gi"))
		g.Expect(got.Status.NodeInfo).To(Equal(infrav1.NodeInfo{Architecture: "amd64", OperatingSystem: "linux"}))
	}, 30*time.Second, 200*time.Millisecond).Should(Succeed())
}
