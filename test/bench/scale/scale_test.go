package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox/pvesim"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/test/bench/harness"
)

// TestBenchScaleSmall is the CI run of the benchmark at small N: the real manager binary
// must bring every machine of both platforms to Running with exactly one VM each, and
// teardown must leave nothing on Proxmox. No timed assertion: only convergence, leaks and
// counts that do not depend on the machine's speed.
func TestBenchScaleSmall(t *testing.T) {
	testenv.RequireAssets(t)
	ctrllog.SetLogger(logr.Discard())
	g := NewWithT(t)
	out := t.TempDir()
	rep, err := run(context.Background(), harness.Options{
		N: 4, C: 2, Profile: pvesim.ProfileFast, Probe: true,
		Platforms:  []infrav1.TalosPlatform{infrav1.TalosPlatformNoCloud, infrav1.TalosPlatformMetal},
		NodeBoot:   -1,
		Window:     5 * time.Second,
		SyncPeriod: time.Minute,
		Timeout:    5 * time.Minute,
		Out:        out,
		Logf:       t.Logf,
	})
	if rep != nil {
		var table strings.Builder
		g.Expect(writeReport(out, rep, &table)).To(Succeed())
		t.Log(table.String())
	}
	g.Expect(err).NotTo(HaveOccurred(), "the run converges and leaks nothing")
	g.Expect(rep.Converged).To(BeTrue())
	g.Expect(rep.Problems).To(BeEmpty())

	// Both platforms ran side by side with their share of the machines.
	g.Expect(rep.Platforms).To(HaveLen(2))
	for _, p := range rep.Platforms {
		g.Expect(p.Machines).To(Equal(2), p.Platform)
		g.Expect(p.Clusters).To(Equal(1), p.Platform)
		g.Expect(p.CreateCallsByEndpoint).To(HaveKey("POST /nodes/{node}/qemu"), "the Counters saw the creates")
		g.Expect(p.CreateCallsByEndpoint["POST /nodes/{node}/qemu"]).To(BeNumerically(">=", 1.0), "at least one create per VM")
		// The probes left the shared nocloud image in storage: that platform's figure is
		// the "image cached" one. A metal image is per machine.
		g.Expect(p.ImageCached).To(Equal(p.Platform == "nocloud"), "%s: image cached in the scale phase", p.Platform)
	}
	// Probes: one create each, never fewer calls than the minimum sequence.
	g.Expect(rep.Probes).To(HaveLen(4))
	for _, p := range rep.Probes {
		g.Expect(p.Calls["POST /nodes/{node}/qemu"]).To(Equal(1), "%s: one create per probe VM", p.Platform)
		g.Expect(p.Total).To(BeNumerically(">=", len(MinimumSequence)))
	}
	// The shared nocloud image is downloaded once per (schematic, version, storage); every
	// metal machine has its own image.
	var nocloud, metal int
	for _, d := range rep.ImageDownloads {
		switch d.Platform {
		case "nocloud":
			nocloud++
			g.Expect(d.Downloads).To(Equal(1), "shared nocloud image downloaded once")
		case "metal":
			metal += d.Downloads
		}
	}
	g.Expect(nocloud).To(Equal(1))
	g.Expect(metal).To(Equal(4), "two metal probes and two metal machines, one image each")
	g.Expect(rep.Manager.PeakRSSMiB).To(BeNumerically(">", 0))

	// The report files exist and parse.
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	g.Expect(err).NotTo(HaveOccurred())
	var back Report
	g.Expect(json.Unmarshal(b, &back)).To(Succeed())
	g.Expect(back.N).To(Equal(4))
	for _, f := range []string{"overhead.svg", "calls.svg"} {
		svg, err := os.ReadFile(filepath.Join(out, f))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(svg)).To(HavePrefix("<svg"))
	}
}

func TestParseMetric(t *testing.T) {
	for _, tc := range []struct {
		line   string
		name   string
		labels map[string]string
		value  float64
		ok     bool
	}{
		{`rest_client_requests_total{code="200",host="127.0.0.1:3456",method="GET"} 42`, "rest_client_requests_total", map[string]string{"code": "200", "host": "127.0.0.1:3456", "method": "GET"}, 42, true},
		{`process_cpu_seconds_total 1.5e+01`, "process_cpu_seconds_total", map[string]string{}, 15, true},
		{`# HELP rest_client_requests_total Number of HTTP requests`, "", nil, 0, false},
		{`x{a="quoted \"q\""} 1`, "x", map[string]string{"a": `quoted \"q\"`}, 1, true},
	} {
		t.Run(tc.line, func(t *testing.T) {
			g := NewWithT(t)
			name, labels, v, ok := harness.ParseMetric(tc.line)
			g.Expect(ok).To(Equal(tc.ok))
			if !tc.ok {
				return
			}
			g.Expect(name).To(Equal(tc.name))
			g.Expect(labels).To(Equal(tc.labels))
			g.Expect(v).To(Equal(tc.value))
		})
	}
}

func TestDist(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want Dist
	}{
		{"empty", nil, Dist{}},
		{"one", []float64{3}, Dist{P50: 3, P99: 3, Max: 3}},
		{"hundred", func() []float64 {
			var s []float64
			for i := 100; i >= 1; i-- {
				s = append(s, float64(i))
			}
			return s
		}(), Dist{P50: 50, P99: 99, Max: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(dist(tc.in)).To(Equal(tc.want))
		})
	}
}

// TestManagerTableSplits: each split of a management API figure by method follows the
// figure it splits and adds up to it. The create split used to be printed under the steady
// figure, where 33 PATCHes per machine (the create's) read as 33 steady PATCHes per
// machine per hour, when the steady window wrote nothing.
func TestManagerTableSplits(t *testing.T) {
	g := NewWithT(t)
	rep := &Report{Manager: ManagerStats{
		APIRequestsPerMachineCreate: 46.8,
		APIRequestsByMethodCreate:   map[string]float64{"GET 200": 2.2, "PATCH 200": 33.8, "POST 201": 10.8},
		APIRequestsPerMachineHour:   60,
		APIRequestsByMethodSteady:   map[string]float64{"GET 200": 60},
	}}
	var b strings.Builder
	printTable(&b, rep)
	var figure string
	var total, sum float64
	check := func() {
		if figure != "" {
			g.Expect(sum).To(BeNumerically("~", total, 0.05), "split of %q", figure)
		}
	}
	splits := 0
	for _, line := range strings.Split(b.String(), "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(cells[1], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(cells[0], "management API requests"):
			check()
			figure, total, sum = cells[0], v, 0
		case strings.HasPrefix(cells[0], "…") && strings.Contains(cells[0], " of which "):
			g.Expect(figure).NotTo(BeEmpty(), "split %q follows no management API figure", cells[0])
			sum += v
			splits++
		default:
			check()
			figure = ""
		}
	}
	check()
	g.Expect(splits).To(Equal(4))
}
