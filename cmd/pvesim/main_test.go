package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
)

func TestRefusesNonLoopback(t *testing.T) {
	g := NewWithT(t)
	var out, errOut bytes.Buffer
	g.Expect(run([]string{"--listen", "0.0.0.0:0"}, &out, &errOut)).To(MatchError(ContainSubstring("non-loopback")))
	g.Expect(run([]string{"--listen", "192.0.2.1:8006"}, &out, &errOut)).To(MatchError(ContainSubstring("non-loopback")))
}

// TestHelpDocumentsProfiles: `pvesim --help` explains both profiles and
// their flags.
func TestHelpDocumentsProfiles(t *testing.T) {
	g := NewWithT(t)
	var out, errOut bytes.Buffer
	g.Expect(run([]string{"--help"}, &out, &errOut)).To(MatchError(flag.ErrHelp))
	for _, want := range []string{"-profile", "-time-scale", "-status-interval", "fast", "realistic", "TimeScale 0.2", "TimeScale 0.001"} {
		g.Expect(errOut.String()).To(ContainSubstring(want))
	}
}

// TestProfileFlagAndConfig: an unknown profile is refused, whether it comes
// from the flag or the config file.
func TestProfileFlagAndConfig(t *testing.T) {
	g := NewWithT(t)
	var out, errOut bytes.Buffer
	g.Expect(run([]string{"--profile", "slow", "--listen", "127.0.0.1:0"}, &out, &errOut)).To(MatchError(ContainSubstring(`unknown profile "slow"`)))
	cfg := filepath.Join(t.TempDir(), "pvesim.yaml")
	g.Expect(os.WriteFile(cfg, []byte("profile: turbo\n"), 0o600)).To(Succeed())
	g.Expect(run([]string{"--config", cfg, "--listen", "127.0.0.1:0"}, &out, &errOut)).To(MatchError(ContainSubstring(`unknown profile "turbo"`)))
}
