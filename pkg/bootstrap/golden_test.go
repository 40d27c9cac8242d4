package bootstrap

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// expectGolden compares got with testdata/<name>, or rewrites the file with -update.
func expectGolden(t *testing.T, name string, got []byte) {
	t.Helper()

	path := filepath.Join("testdata", name)

	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./pkg/bootstrap -update` to create it)", err)
	}

	NewWithT(t).Expect(string(got)).To(Equal(string(want)), "golden file %s differs; rerun with -update if intended", path)
}
