package webhooks_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/webhooks"
)

// k8sClient talks to a real kube-apiserver with the provider's CRDs installed and its
// webhooks served by a controller-runtime manager, exactly as in a management cluster.
var k8sClient client.Client

// noEnv says why k8sClient is nil: envtest assets are missing (locally), or the binary
// fuzzes, which needs no API server (each fuzz worker runs TestMain again).
var noEnv string

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

// requireEnv skips (locally) or fails (CI=true) a test that needs the API server.
func requireEnv(t *testing.T) {
	t.Helper()
	if k8sClient == nil {
		testenv.SkipOrFail(t, "envtest unavailable: %s", noEnv)
	}
}

func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

func runSuite(m *testing.M) int {
	flag.Parse()
	if fuzzing() {
		noEnv = "fuzzing"
		return m.Run()
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	if _, err := testenv.AssetsDir(); err != nil {
		testenv.NoAssetsInMain(err)
		noEnv = err.Error() + "; " + testenv.HowToGetAssets
		return m.Run()
	}
	env, err := testenv.New(testenv.Options{Webhooks: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest:", err)
		return 1
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()

	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = clusterv1.AddToScheme(scheme)
	_ = infrav1.AddToScheme(scheme)

	opts := env.WebhookInstallOptions
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		WebhookServer: webhook.NewServer(webhook.Options{
			Host:    opts.LocalServingHost,
			Port:    opts.LocalServingPort,
			CertDir: opts.LocalServingCertDir,
		}),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		return 1
	}
	if err := webhooks.SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, "webhooks:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = mgr.Start(ctx) }()

	// Wait until the webhook server answers, so the first test does not race it.
	deadline := time.Now().Add(30 * time.Second)
	for mgr.GetWebhookServer().StartedChecker()(nil) != nil {
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "webhook server did not start")
			return 1
		}
		time.Sleep(100 * time.Millisecond)
	}
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	return m.Run()
}
