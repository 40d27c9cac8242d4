package templates

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// flavors maps clusterctl flavor names ("" = default) to their files in templates/.
var flavors = map[string]string{
	"":          "cluster-template.yaml",
	"metal":     "cluster-template-metal.yaml",
	"talos-vip": "cluster-template-talos-vip.yaml",
	"topology":  "cluster-template-topology.yaml",
}

// handWritten are the flavors hack/gen-templates.sh does not assemble (none: the topology
// flavor is assembled too, its ClusterClass lives in the hand-written clusterClassFile).
var handWritten = map[string]bool{}

// clusterClassFile is the ClusterClass clusterctl adds to the topology flavor's output.
const clusterClassFile = "clusterclass-proxmox-talos.yaml"

// flavorLabel is the flavor's name as written in the docs' Flavors column.
func flavorLabel(flavor string) string {
	if flavor == "" {
		return "default"
	}
	return flavor
}

func sortedFlavors() []string {
	var fs []string
	for f := range flavors {
		fs = append(fs, f)
	}
	sort.Strings(fs)
	return fs
}

// repoRoot is the directory holding go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// variable is a template variable as documented or as used.
type variable struct {
	Name     string
	Default  string
	Required bool
}

// docVariable is one row of the docs' variable table.
type docVariable struct {
	variable
	Flavors []string // nil = all
}

func (v docVariable) inFlavor(flavor string) bool {
	return v.Flavors == nil || slices.Contains(v.Flavors, flavorLabel(flavor))
}

// docVariables parses the table under "## Variables" in docs/templates.md.
func docVariables(t *testing.T) map[string]docVariable {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "templates.md"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]docVariable{}
	inSection := false
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			inSection = line == "## Variables"
			continue
		}
		if !inSection || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) < 4 {
			t.Fatalf("docs/templates.md: variable row with fewer than 4 cells: %q", line)
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		v := docVariable{variable: variable{Name: strings.Trim(cells[0], "`")}}
		switch def := cells[1]; {
		case def == "*required*":
			v.Required = true
		case def == "`\"\"`":
			v.Default = ""
		case strings.HasPrefix(def, "`") && strings.HasSuffix(def, "`"):
			v.Default = strings.Trim(def, "`")
		default:
			t.Fatalf("docs/templates.md: %s: default %q is neither *required* nor a `value`", v.Name, def)
		}
		if cells[2] != "all" {
			for _, f := range strings.Split(cells[2], ",") {
				f = strings.TrimSpace(f)
				if _, ok := flavors[strings.TrimPrefix(f, "default")]; !ok && f != "default" {
					t.Fatalf("docs/templates.md: %s: unknown flavor %q", v.Name, f)
				}
				v.Flavors = append(v.Flavors, f)
			}
		}
		if strings.TrimSpace(cells[3]) == "" {
			t.Errorf("docs/templates.md: %s has no meaning", v.Name)
		}
		if _, dup := vars[v.Name]; dup {
			t.Errorf("docs/templates.md: %s documented twice", v.Name)
		}
		vars[v.Name] = v
	}
	if len(vars) == 0 {
		t.Fatal("docs/templates.md: no variable table under ## Variables")
	}
	return vars
}

// docVariablesFor is the documented variables of one flavor.
func docVariablesFor(t *testing.T, flavor string) map[string]variable {
	t.Helper()
	out := map[string]variable{}
	for name, v := range docVariables(t) {
		if v.inFlavor(flavor) {
			out[name] = v.variable
		}
	}
	return out
}

// varRE matches the clusterctl (drone/envsubst) forms ${VAR}, ${VAR:=d}, ${VAR=d}, ${VAR:-d}.
var varRE = regexp.MustCompile(`\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:(:=|=|:-|-)([^}]*))?\}`)

// templateVariables lists the variables a template uses. A variable used with different
// defaults in two places is an error.
func templateVariables(t *testing.T, name string, content []byte) map[string]variable {
	t.Helper()
	vars := map[string]variable{}
	for _, m := range varRE.FindAllSubmatch(content, -1) {
		v := variable{Name: string(m[1]), Required: m[2] == nil, Default: string(m[3])}
		if prev, ok := vars[v.Name]; ok && prev != v {
			t.Errorf("%s: %s used as %+v and as %+v: give it one default", name, v.Name, prev, v)
			continue
		}
		vars[v.Name] = v
	}
	if n := bytes.Count(content, []byte("${")); n != len(varRE.FindAll(content, -1)) {
		t.Errorf("%s: %d occurrences of ${ but %d parseable variables", name, n, len(varRE.FindAll(content, -1)))
	}
	return vars
}

func compareVariables(t *testing.T, what string, got, want map[string]variable) {
	t.Helper()
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: documented variable %s is not used", what, name)
		case g.Required != w.Required:
			t.Errorf("%s: %s required=%v, docs say required=%v", what, name, g.Required, w.Required)
		case g.Default != w.Default:
			t.Errorf("%s: %s defaults to %q, docs say %q", what, name, g.Default, w.Default)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: variable %s is not documented in docs/templates.md", what, name)
		}
	}
}

// TestTemplatesUpToDate proves the committed flavors are what hack/gen-templates.sh assembles.
func TestTemplatesUpToDate(t *testing.T) {
	root := repoRoot(t)
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack", "gen-templates.sh"), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/gen-templates.sh: %v\n%s", err, b)
	}
	generated, _ := filepath.Glob(filepath.Join(out, "cluster-template*.yaml"))
	committed, _ := filepath.Glob(filepath.Join(root, "templates", "cluster-template*.yaml"))
	handWrittenFiles := map[string]bool{}
	for f := range handWritten {
		handWrittenFiles[flavors[f]] = true
	}
	var committedGenerated []string
	for _, c := range committed {
		if !handWrittenFiles[filepath.Base(c)] {
			committedGenerated = append(committedGenerated, c)
		}
	}
	n := len(flavors) - len(handWritten)
	if len(generated) != n || len(committedGenerated) != n {
		t.Fatalf("want %d generated flavors; generated %v, committed %v", n, generated, committedGenerated)
	}
	for flavor, file := range flavors {
		if handWritten[flavor] {
			continue
		}
		want, err := os.ReadFile(filepath.Join(out, file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, "templates", file))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("templates/%s is out of date: run hack/gen-templates.sh", file)
		}
	}
}

// TestVariablesDocumented compares every flavor's variables with docs/templates.md.
func TestVariablesDocumented(t *testing.T) {
	root := repoRoot(t)
	used := map[string]bool{}
	for _, flavor := range sortedFlavors() {
		file := flavors[flavor]
		content, err := os.ReadFile(filepath.Join(root, "templates", file))
		if err != nil {
			t.Fatal(err)
		}
		got := templateVariables(t, file, content)
		compareVariables(t, file, got, docVariablesFor(t, flavor))
		for name := range got {
			used[name] = true
		}
	}
	for name := range docVariables(t) {
		if !used[name] {
			t.Errorf("docs/templates.md documents %s, which no flavor uses", name)
		}
	}
}
