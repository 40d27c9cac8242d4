// Package docs checks the guides against the code: the Proxmox role in getting-started.md
// against the provider's privilege table, and every pveum command against the Proxmox VE
// API schemas it maps to.
package docs

import (
	"encoding/json"
	"fmt"
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/testenv"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/pkg/proxmox"
)

const guide = "getting-started.md"

// shellLines returns the lines of the guide's ```sh blocks with the comment line above each.
func shellLines(t *testing.T) (lines, comments []string) {
	t.Helper()
	raw, err := os.ReadFile(guide)
	if err != nil {
		t.Fatal(err)
	}
	in, last := false, ""
	for _, l := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(trimmed, "```sh"):
			in, last = true, ""
		case strings.HasPrefix(trimmed, "```"):
			in = false
		case in && strings.HasPrefix(trimmed, "#"):
			last = trimmed
		case in && trimmed != "":
			lines, comments = append(lines, trimmed), append(comments, last)
		}
	}
	return lines, comments
}

// TestGuideRoleMatchesPrivilegeTable: the four `pveum role add` lines (PVE 8.4 / 9.x,
// Download / Upload) hold exactly proxmox.RequiredPrivileges for their case.
func TestGuideRoleMatchesPrivilegeTable(t *testing.T) {
	g := NewWithT(t)
	lines, comments := shellLines(t)
	privsRE := regexp.MustCompile(`--privs "([^"]+)"`)
	seen := map[string]bool{}
	for i, l := range lines {
		if !strings.HasPrefix(l, "pveum role add ") {
			continue
		}
		c := comments[i]
		major := 0
		switch {
		case strings.Contains(c, "PVE 9"):
			major = 9
		case strings.Contains(c, "PVE 8.4"):
			major = 8
		}
		transfer := proxmox.ImageTransfer("")
		switch {
		case strings.Contains(c, "Download"):
			transfer = proxmox.TransferDownload
		case strings.Contains(c, "Upload"):
			transfer = proxmox.TransferUpload
		}
		g.Expect(major).NotTo(BeZero(), "the comment above %q names no PVE version", l)
		g.Expect(transfer).NotTo(BeEmpty(), "the comment above %q names no transfer mode", l)
		m := privsRE.FindStringSubmatch(l)
		g.Expect(m).To(HaveLen(2), "no --privs in %q", l)
		got := strings.Split(m[1], ",")
		want := proxmox.RequiredPrivileges(major, transfer)
		g.Expect(got).To(ConsistOf(want), "%s: the guide must say\npveum role add CAPIProxmoxTalos --privs %q", c, strings.Join(want, ","))
		seen[fmt.Sprintf("%d-%s", major, transfer)] = true
	}
	g.Expect(seen).To(HaveLen(4), "one role line per PVE version and transfer mode")

	// Every privilege of the table is explained in the guide's table.
	raw, _ := os.ReadFile(guide)
	for _, p := range proxmox.Privileges {
		g.Expect(string(raw)).To(ContainSubstring("`"+p.Name+"`"), "the guide does not explain %s", p.Name)
	}
}

// pveumCommand maps a pveum subcommand to the API call it makes and its positional
// parameters (as pveum's command table in PVE::CLI::pveum does).
type pveumCommand struct {
	method, path string
	positional   []string
}

var pveumCommands = map[string]pveumCommand{
	"user add":       {"POST", "/access/users", []string{"userid"}},
	"user token add": {"POST", "/access/users/{userid}/token/{tokenid}", []string{"userid", "tokenid"}},
	"role add":       {"POST", "/access/roles", []string{"roleid"}},
	"role list":      {"GET", "/access/roles", nil},
	"acl modify":     {"PUT", "/access/acl", []string{"path"}},
	"acl list":       {"GET", "/access/acl", nil},
}

type apiParam struct {
	Type     string   `json:"type"`
	Optional any      `json:"optional"`
	Enum     []string `json:"enum"`
	Pattern  string   `json:"pattern"`
	Format   any      `json:"format"`
}

type apiNode struct {
	Path string `json:"path"`
	Info map[string]struct {
		Parameters struct {
			Properties map[string]apiParam `json:"properties"`
		} `json:"parameters"`
	} `json:"info"`
	Children []apiNode `json:"children"`
}

func loadSchema(t *testing.T, version string) map[string]map[string]apiParam {
	t.Helper()
	p := filepath.Join("..", "..", "shared", "pve-api", "pve-"+version+"-apidata.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		// Like pvesim's conformance tests: the schemas live beside the repository
		// (../shared/pve-api), not in it, so a clean clone skips.
		testenv.SkipOrFail(t, "Proxmox API schema %s not found (expected <repo>/../shared/pve-api): %v", p, err)
	}
	var roots []apiNode
	if err := json.Unmarshal(raw, &roots); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]apiParam{}
	var walk func([]apiNode)
	walk = func(ns []apiNode) {
		for _, n := range ns {
			for m, i := range n.Info {
				out[m+" "+n.Path] = i.Parameters.Properties
			}
			walk(n.Children)
		}
	}
	walk(roots)
	return out
}

// shellWords splits a command line like sh: single and double quotes, no expansion.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words, inWord = append(words, cur.String()), false
				cur.Reset()
			}
		case r == '#':
			if !inWord {
				return words, nil
			}
			cur.WriteRune(r)
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

var booleanRE = regexp.MustCompile(`^(0|1|true|false|yes|no|on|off)$`)

// TestGuidePveumLinesAreValid: every pveum line of the guide is a known pveum command whose
// options exist, with required parameters present and values of the right type, in the API
// schemas of both Proxmox VE 8.4 and 9.1.
func TestGuidePveumLinesAreValid(t *testing.T) {
	schemas := map[string]map[string]map[string]apiParam{"8.4": loadSchema(t, "8.4"), "9.1": loadSchema(t, "9.1")}
	lines, _ := shellLines(t)
	n := 0
	for _, l := range lines {
		if !strings.HasPrefix(l, "pveum ") {
			continue
		}
		n++
		t.Run(l, func(t *testing.T) {
			g := NewWithT(t)
			words, err := shellWords(l)
			g.Expect(err).NotTo(HaveOccurred())
			var cmd pveumCommand
			var rest []string
			// Longest subcommand first: "user token add" before "user add".
			for k := 3; k >= 2 && cmd.path == ""; k-- {
				if len(words) > k {
					if c, ok := pveumCommands[strings.Join(words[1:k+1], " ")]; ok {
						cmd, rest = c, words[k+1:]
					}
				}
			}
			g.Expect(cmd.path).NotTo(BeEmpty(), "unknown pveum command in %q (known: %v)", l, slices.Sorted(mapsKeys(pveumCommands)))
			args := map[string]string{}
			for i, name := range cmd.positional {
				g.Expect(len(rest)).To(BeNumerically(">", i), "%q lacks the positional <%s>", l, name)
				args[name] = rest[i]
			}
			opts := rest[min(len(cmd.positional), len(rest)):]
			for i := 0; i < len(opts); i++ {
				g.Expect(opts[i]).To(HavePrefix("--"), "unexpected argument %q in %q", opts[i], l)
				name := strings.TrimPrefix(opts[i], "--")
				g.Expect(i+1).To(BeNumerically("<", len(opts)), "--%s has no value in %q", name, l)
				args[name] = opts[i+1]
				i++
			}
			for version, schema := range schemas {
				params, ok := schema[cmd.method+" "+cmd.path]
				g.Expect(ok).To(BeTrue(), "PVE %s has no %s %s", version, cmd.method, cmd.path)
				for name, value := range args {
					p, ok := params[name]
					g.Expect(ok).To(BeTrue(), "PVE %s: %s %s has no parameter %q (%q)", version, cmd.method, cmd.path, name, l)
					switch p.Type {
					case "boolean":
						g.Expect(value).To(MatchRegexp(booleanRE.String()), "PVE %s: --%s takes a boolean", version, name)
					case "integer":
						g.Expect(value).To(MatchRegexp(`^-?\d+$`), "PVE %s: --%s takes an integer", version, name)
					}
					if len(p.Enum) > 0 {
						g.Expect(p.Enum).To(ContainElement(value), "PVE %s: --%s", version, name)
					}
					if p.Pattern != "" {
						// Perl's (?^:...) is Go's (?:...).
						re := strings.NewReplacer("(?^:", "(?:", "(?^i:", "(?i:").Replace(p.Pattern)
						g.Expect(value).To(MatchRegexp("^(?:"+re+")$"), "PVE %s: --%s", version, name)
					}
				}
				for name, p := range params {
					if p.Optional == nil || fmt.Sprint(p.Optional) == "0" || p.Optional == false {
						g.Expect(args).To(HaveKey(name), "PVE %s: %s %s requires %q (%q)", version, cmd.method, cmd.path, name, l)
					}
				}
			}
			checkValues(g, cmd, args)
		})
	}
	if n < 6 {
		t.Fatalf("only %d pveum lines found in the guide", n)
	}
}

// checkValues checks what the schema leaves to formats: user and token ids, ACL paths, and
// that a token is granted by its full id.
func checkValues(g Gomega, cmd pveumCommand, args map[string]string) {
	userRE := `[^\s:/!]+@[A-Za-z][A-Za-z0-9.\-_]+`
	if v, ok := args["userid"]; ok {
		g.Expect(v).To(MatchRegexp("^" + userRE + "$"))
	}
	if v, ok := args["tokenid"]; ok {
		g.Expect(v).To(MatchRegexp(`^[A-Za-z][A-Za-z0-9.\-_]+$`))
	}
	if v, ok := args["tokens"]; ok {
		g.Expect(v).To(MatchRegexp("^" + userRE + `![A-Za-z][A-Za-z0-9.\-_]+$`))
	}
	if v, ok := args["users"]; ok {
		g.Expect(v).To(MatchRegexp("^" + userRE + "$"))
	}
	for _, key := range []string{"roleid", "roles"} {
		if v, ok := args[key]; ok {
			g.Expect(v).To(MatchRegexp(`^[A-Za-z0-9.\-_]+$`), key)
		}
	}
	if v, ok := args["path"]; ok && cmd.path == "/access/acl" {
		g.Expect(v).To(HavePrefix("/"))
	}
}

func mapsKeys[M ~map[K]V, K comparable, V any](m M) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
