package apischema

import (
	"errors"
	"os"
	"path/filepath"
)

// SchemaDir finds <repo>/../shared/pve-api by walking up from the working
// directory to the module root (go.mod). ok is false when absent, so tests
// can skip outside the development tree.
func SchemaDir() (string, bool, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false, err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false, errors.New("go.mod not found above working directory")
		}
		dir = parent
	}
	sd := filepath.Join(dir, "..", "shared", "pve-api")
	if _, err := os.Stat(filepath.Join(sd, "pve-9.1-apidata.json")); err != nil {
		return sd, false, nil
	}
	return sd, true, nil
}
