package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

// TestSkipOrFail runs a child test binary with and without CI=true: locally a missing
// prerequisite skips with its reason, under CI it fails the test.
func TestSkipOrFail(t *testing.T) {
	if os.Getenv("TESTENV_SKIP_CHILD") == "1" {
		SkipOrFail(t, "widget missing: run make widget")
		return
	}
	for _, tc := range []struct {
		ci       string
		wantFail bool
		want     string
	}{
		{ci: "", wantFail: false, want: "--- SKIP: TestSkipOrFail"},
		{ci: "false", wantFail: false, want: "widget missing: run make widget"},
		{ci: "true", wantFail: true, want: "CI=true: a test that cannot run fails the run"},
		{ci: "1", wantFail: true, want: "--- FAIL: TestSkipOrFail"},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			g := NewWithT(t)
			cmd := exec.Command(os.Args[0], "-test.run=^TestSkipOrFail$", "-test.v")
			cmd.Env = append(os.Environ(), "TESTENV_SKIP_CHILD=1", "CI="+tc.ci)
			out, err := cmd.CombinedOutput()
			g.Expect(err != nil).To(Equal(tc.wantFail), string(out))
			g.Expect(strings.Contains(string(out), tc.want)).To(BeTrue(), string(out))
		})
	}
}
