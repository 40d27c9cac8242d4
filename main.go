// The manager of the Proxmox VE + Talos infrastructure provider: wiring only (flags,
// scheme, webhooks, controllers). The reconcilers live in controllers/, the Proxmox door in
// pkg/proxmox.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/logs"
	logsv1 "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	ipamv1 "sigs.k8s.io/cluster-api/api/ipam/v1beta2"
	"sigs.k8s.io/cluster-api/controllers/remote"
	"sigs.k8s.io/cluster-api/util/flags"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/controllers"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/machine"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/webhooks"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/workload"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

const controllerName = "cluster-api-provider-proxmox-talos-manager"

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")

	// version and gitCommit are stamped at build time (make image, the Dockerfile):
	// -ldflags "-X main.version=v0.2.0 -X main.gitCommit=<sha>".
	version   = "dev"
	gitCommit = "unknown"
)

func init() {
	_ = clientgoscheme.AddToScheme(scheme)
	_ = clusterv1.AddToScheme(scheme)
	_ = ipamv1.AddToScheme(scheme)
	_ = infrav1.AddToScheme(scheme)
}

// options are the manager's command-line flags.
type options struct {
	leaderElect                 bool
	leaderElectionNamespace     string
	leaderElectionLeaseDuration time.Duration
	leaderElectionRenewDeadline time.Duration
	leaderElectionRetryPeriod   time.Duration
	watchNamespace              string
	watchFilterValue            string
	syncPeriod                  time.Duration
	kubeAPIQPS                  float32
	kubeAPIBurst                int
	workloadClientQPS           float32
	workloadClientBurst         int
	clusterConcurrency          int
	machineConcurrency          int
	webhookPort                 int
	webhookCertDir              string
	webhookCertName             string
	webhookKeyName              string
	healthAddr                  string
	profilerAddr                string
	proxmoxLimits               proxmox.Limits
	proxmoxRequestTimeout       time.Duration
	imageGCGrace                time.Duration
	nodeLossHandoverAfter       time.Duration
	managerOptions              flags.ManagerOptions
	logOptions                  *logs.Options
	showVersion                 bool
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	logsv1.AddFlags(o.logOptions, fs)
	fs.BoolVar(&o.showVersion, "version", false, "Print the version and exit.")
	fs.BoolVar(&o.leaderElect, "leader-elect", false,
		"Enable leader election, so that only one manager replica reconciles at a time.")
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "",
		"Namespace of the leader election Lease; empty: the pod's namespace (required outside a cluster).")
	fs.DurationVar(&o.leaderElectionLeaseDuration, "leader-elect-lease-duration", 15*time.Second,
		"How long non-leaders wait before forcing leadership.")
	fs.DurationVar(&o.leaderElectionRenewDeadline, "leader-elect-renew-deadline", 10*time.Second,
		"How long the leader retries refreshing leadership before giving up.")
	fs.DurationVar(&o.leaderElectionRetryPeriod, "leader-elect-retry-period", 2*time.Second,
		"How long leader election clients wait between tries.")
	fs.StringVar(&o.watchNamespace, "namespace", "",
		"Namespace to watch; all namespaces when empty.")
	fs.StringVar(&o.watchFilterValue, "watch-filter", "",
		fmt.Sprintf("Reconcile only objects whose %s label has this value; all objects when empty.", clusterv1.WatchLabel))
	fs.DurationVar(&o.syncPeriod, "sync-period", 10*time.Minute,
		"Minimum interval at which every watched object is reconciled again.")
	// No client-side limit by default, as controller-runtime's own default: the requests
	// in flight are already bounded by the reconcilers' workers (each waits for its
	// answer), the API server's priority and fairness protects it, and client-go's
	// limiter, applied per resource type, made a burst of creates queue its status patches
	// (Cluster API's patch helper writes up to three per pass): at 50 per second, 100
	// machines waited ~50 s for them.
	fs.Float32Var(&o.kubeAPIQPS, "kube-api-qps", -1,
		"Queries per second to the management cluster's API server, per resource type; negative: no client-side limit (the API server's priority and fairness applies).")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 100,
		"Burst of queries to the management cluster's API server (with --kube-api-qps >= 0).")
	fs.Float32Var(&o.workloadClientQPS, "workload-client-qps", 20,
		"Queries per second to each workload cluster's API server.")
	fs.IntVar(&o.workloadClientBurst, "workload-client-burst", 30,
		"Burst of queries to each workload cluster's API server.")
	fs.IntVar(&o.clusterConcurrency, "proxmoxtaloscluster-concurrency", 10,
		"ProxmoxTalosClusters reconciled at once.")
	fs.IntVar(&o.machineConcurrency, "proxmoxtalosmachine-concurrency", 20,
		"ProxmoxTalosMachines reconciled at once (Proxmox load is bounded separately by the --proxmox-* flags).")
	fs.IntVar(&o.webhookPort, "webhook-port", 9443, "Port of the webhook server.")
	fs.StringVar(&o.webhookCertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs/",
		"Directory holding the webhook server's certificate and key.")
	fs.StringVar(&o.webhookCertName, "webhook-cert-name", "tls.crt", "Webhook certificate file name.")
	fs.StringVar(&o.webhookKeyName, "webhook-key-name", "tls.key", "Webhook key file name.")
	fs.StringVar(&o.healthAddr, "health-addr", ":9440", "Address of the health and readiness probes.")
	fs.StringVar(&o.profilerAddr, "profiler-address", "",
		"Address serving Go's pprof endpoints (/debug/pprof/) without authentication, e.g. 127.0.0.1:6060; empty: off.")
	// The hypervisor's real cost is the tasks (create, import, start), bounded by
	// --proxmox-max-tasks-per-node and the in-flight limits; API reads are answered by
	// pveproxy from pmxcfs in milliseconds. 50 QPS (burst 100) keeps a burst of creates
	// from queueing behind the rate limit while staying far below what pveproxy's
	// workers serve (docs/performance.md).
	fs.Float64Var(&o.proxmoxLimits.QPS, "proxmox-qps", 50,
		"Sustained requests per second to each Proxmox VE API (negative: unlimited).")
	fs.IntVar(&o.proxmoxLimits.Burst, "proxmox-burst", 100, "Burst of requests to each Proxmox VE API.")
	fs.IntVar(&o.proxmoxLimits.MaxInFlight, "proxmox-max-in-flight", 8,
		"Concurrent requests to each Proxmox VE API.")
	fs.IntVar(&o.proxmoxLimits.MaxInFlightPerNode, "proxmox-max-in-flight-per-node", 4,
		"Concurrent requests addressed to one Proxmox node.")
	fs.IntVar(&o.proxmoxLimits.MaxTasksPerNode, "proxmox-max-tasks-per-node", 4,
		"Concurrent storage-touching tasks (create, delete, resize) on one Proxmox node; more collide on PVE's storage lock.")
	fs.DurationVar(&o.proxmoxRequestTimeout, "proxmox-request-timeout", 30*time.Second,
		"Timeout of one Proxmox VE API request.")
	fs.DurationVar(&o.imageGCGrace, "image-gc-grace", 30*time.Second,
		"How long a Talos image must be unused by every machine on its Proxmox storage before it is deleted; negative keeps unused images until the last cluster on the storage is deleted.")
	fs.DurationVar(&o.nodeLossHandoverAfter, "node-loss-handover-after", 5*time.Minute,
		"How long the Proxmox node of a machine being deleted may stay offline before the VM's deletion is handed over to a successor ProxmoxTalosMachine (which destroys it when the node answers, keeping its address reserved) so that Cluster API can replace the machine; 0 waits for the node (docs/lifecycle.md).")
	flags.AddManagerOptions(fs, &o.managerOptions)
}

func main() {
	o := &options{logOptions: logs.NewOptions()}
	o.addFlags(pflag.CommandLine)
	pflag.CommandLine.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	pflag.CommandLine.AddGoFlagSet(flag.CommandLine)
	pflag.Parse()
	if o.showVersion {
		fmt.Printf("%s %s (commit %s)\n", controllerName, version, gitCommit)
		return
	}
	if err := logsv1.ValidateAndApply(o.logOptions, nil); err != nil {
		fmt.Fprintf(os.Stderr, "invalid logging flags: %v\n", err)
		os.Exit(1)
	}
	ctrl.SetLogger(klog.Background())
	setMemoryLimit()

	if err := run(ctrl.SetupSignalHandler(), o); err != nil {
		setupLog.Error(err, "manager stopped")
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options) error {
	restConfig, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	restConfig.QPS = o.kubeAPIQPS
	restConfig.Burst = o.kubeAPIBurst
	restConfig.UserAgent = remote.DefaultClusterAPIUserAgent(controllerName)

	tlsOptions, metricsOptions, err := flags.GetManagerOptions(o.managerOptions)
	if err != nil {
		return fmt.Errorf("invalid manager flags: %w", err)
	}

	var namespaces map[string]ctrlcache.Config
	if o.watchNamespace != "" {
		namespaces = map[string]ctrlcache.Config{o.watchNamespace: {}}
	}
	// Cache only the Secrets that belong to clusters (bootstrap data, kubeconfigs); the
	// credentials Secret is read uncached.
	clusterSecrets, _ := labels.NewRequirement(clusterv1.ClusterNameLabel, selection.Exists, nil)

	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                     scheme,
		LeaderElection:             o.leaderElect,
		LeaderElectionID:           "controller-leader-election-capi-proxmox-talos",
		LeaderElectionNamespace:    o.leaderElectionNamespace,
		LeaseDuration:              &o.leaderElectionLeaseDuration,
		RenewDeadline:              &o.leaderElectionRenewDeadline,
		RetryPeriod:                &o.leaderElectionRetryPeriod,
		LeaderElectionResourceLock: resourcelock.LeasesResourceLock,
		PprofBindAddress:           o.profilerAddr,
		HealthProbeBindAddress:     o.healthAddr,
		Metrics:                    *metricsOptions,
		Cache: ctrlcache.Options{
			DefaultNamespaces: namespaces,
			SyncPeriod:        &o.syncPeriod,
			// managedFields are a large part of every cached object and nothing here reads
			// them (patches are computed from the objects' contents).
			DefaultTransform: ctrlcache.TransformStripManagedFields(),
			ByObject: map[client.Object]ctrlcache.ByObject{
				&corev1.Secret{}: {Label: labels.NewSelector().Add(*clusterSecrets)},
			},
		},
		Client: client.Options{
			Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.ConfigMap{}, &corev1.Secret{}}},
		},
		WebhookServer: webhook.NewServer(webhook.Options{
			Port:     o.webhookPort,
			CertDir:  o.webhookCertDir,
			CertName: o.webhookCertName,
			KeyName:  o.webhookKeyName,
			TLSOpts:  tlsOptions,
		}),
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}

	if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
		return err
	}
	if err := webhooks.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up webhooks: %w", err)
	}
	if err := setupReconcilers(ctx, mgr, o); err != nil {
		return err
	}

	setupLog.Info("starting manager")
	return mgr.Start(ctx)
}

// Clusters are read for their state; kubeconfig Secrets to reach workload clusters.
// +kubebuilder:rbac:groups=cluster.x-k8s.io,resources=clusters;clusters/status,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// setupReconcilers starts the provider's controllers.
func setupReconcilers(ctx context.Context, mgr ctrl.Manager, o *options) error {
	metrics, err := proxmox.NewMetrics(ctrlmetrics.Registry)
	if err != nil {
		return fmt.Errorf("registering Proxmox client metrics: %w", err)
	}
	// One limiter for the whole manager: the limits hold for all clusters together, since
	// they usually share one Proxmox VE installation.
	proxmoxFactory := clients.NewProxmoxFactory(clients.ProxmoxOptions{
		Limiter: proxmox.NewLimiter(o.proxmoxLimits),
		Metrics: metrics,
		Logger:  ctrl.Log.WithName("proxmox"),
		Tune: func(c *proxmox.Config) {
			c.RequestTimeout = o.proxmoxRequestTimeout
			c.UserAgent = controllerName
		},
	})

	// Workload clusters are reached only while a machine waits for its Node, with a
	// client that knows Nodes only (internal/workload says why not the ClusterCache).
	workloadClusters := workload.New(mgr.GetClient(), mgr.GetScheme(), workload.Options{
		UserAgent: remote.DefaultClusterAPIUserAgent(controllerName),
		QPS:       o.workloadClientQPS,
		Burst:     o.workloadClientBurst,
	})

	if err := (&controllers.ProxmoxTalosClusterReconciler{
		Client:           mgr.GetClient(),
		Recorder:         mgr.GetEventRecorder("proxmoxtaloscluster-controller"),
		Proxmox:          proxmoxFactory,
		WatchFilterValue: o.watchFilterValue,
		ImageGCGrace:     o.imageGCGrace,
	}).SetupWithManager(ctx, mgr, controller.Options{MaxConcurrentReconciles: o.clusterConcurrency}); err != nil {
		return fmt.Errorf("setting up the ProxmoxTalosCluster controller: %w", err)
	}
	if err := (&controllers.ProxmoxTalosMachineReconciler{
		Client:           mgr.GetClient(),
		Recorder:         mgr.GetEventRecorder("proxmoxtalosmachine-controller"),
		Proxmox:          proxmoxFactory,
		ImageFactory:     clients.NewImageFactoryFactory(),
		Workload:         workloadClusters,
		WatchFilterValue: o.watchFilterValue,
		Timing:           machine.Timing{NodeLossHandoverAfter: o.nodeLossHandoverAfter},
	}).SetupWithManager(ctx, mgr, controller.Options{MaxConcurrentReconciles: o.machineConcurrency}); err != nil {
		return fmt.Errorf("setting up the ProxmoxTalosMachine controller: %w", err)
	}
	// Templates publish status.capacity/nodeInfo for the cluster autoscaler (scale from
	// zero). The work is a few reads from the cache and at most one status patch, so a
	// couple of workers keep up with any number of templates.
	if err := (&controllers.ProxmoxTalosMachineTemplateReconciler{
		Client:           mgr.GetClient(),
		WatchFilterValue: o.watchFilterValue,
	}).SetupWithManager(ctx, mgr, controller.Options{MaxConcurrentReconciles: 2}); err != nil {
		return fmt.Errorf("setting up the ProxmoxTalosMachineTemplate controller: %w", err)
	}
	return nil
}

// setMemoryLimit gives the Go runtime a soft memory limit of 90 % of the container's
// (cgroup) memory limit. Without one, the heap grows to twice what is live before each
// collection (GOGC=100), so the process looks twice its size and a container limit set for
// the live data kills it; with one, the collector runs harder near the limit instead
// (docs/performance.md, Memory). GOMEMLIMIT, when set, wins; AUTOMEMLIMIT=off disables it.
func setMemoryLimit() {
	limit, err := memlimit.SetGoMemLimitWithOpts(memlimit.WithRatio(0.9), memlimit.WithProvider(memlimit.FromCgroup))
	switch {
	case err != nil:
		setupLog.Info("No Go memory limit from the container's", "reason", err.Error())
	case limit > 0:
		setupLog.Info("Go memory limit set to 90% of the container's memory limit", "bytes", limit)
	}
}
