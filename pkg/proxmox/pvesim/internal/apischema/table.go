package apischema

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"
)

//go:generate go run ./gen -pve84 ../../../../../../shared/pve-api/pve-8.4-apidata.json -pve91 ../../../../../../shared/pve-api/pve-9.1-apidata.json -out table.json

// Table is the compact schema subset for the served routes.
type Table struct {
	// Source names the schema files the table was derived from.
	Source string   `json:"source"`
	Routes []*Route `json:"routes"`
}

// Route is one method on one path.
type Route struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Name   string `json:"name,omitempty"`
	// User is permissions.user ("all": any authenticated user, the handler
	// checks the rest).
	User string `json:"user,omitempty"`
	// Check is permissions.check from 9.1; Check84 is set only where 8.4
	// differs (guest-agent privileges).
	Check   json.RawMessage `json:"check,omitempty"`
	Check84 json.RawMessage `json:"check84,omitempty"`
	// Proxyto "node" means PVE forwards the call to that node, so a dead node
	// answers 595.
	Proxyto string   `json:"proxyto,omitempty"`
	Params  []*Param `json:"params"`
}

// Param is one request parameter. Indexed parameters keep their schema name
// ("scsi[n]") and carry MaxIndex.
type Param struct {
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	Optional  bool     `json:"optional,omitempty"`
	Enum      []string `json:"enum,omitempty"`
	Pattern   string   `json:"pattern,omitempty"`
	Minimum   *float64 `json:"minimum,omitempty"`
	Maximum   *float64 `json:"maximum,omitempty"`
	MaxLength *int     `json:"maxLength,omitempty"`
	// Format is a named format (pve-vmid, pve-node...).
	Format string `json:"format,omitempty"`
	// Keys describes an inline property-string format (scsi, net, ...).
	Keys     map[string]*Key `json:"keys,omitempty"`
	MaxIndex int             `json:"maxIndex,omitempty"`
	Requires string          `json:"requires,omitempty"`
	// Only91 marks parameters PVE 8.4 does not know (rejected in 8.4 mode).
	Only91 bool `json:"only91,omitempty"`
}

// Key is one key of an inline property-string format.
type Key struct {
	Type       string   `json:"type,omitempty"`
	Optional   bool     `json:"optional,omitempty"`
	DefaultKey bool     `json:"defaultKey,omitempty"`
	Enum       []string `json:"enum,omitempty"`
	Pattern    string   `json:"pattern,omitempty"`
	Minimum    *float64 `json:"minimum,omitempty"`
	Maximum    *float64 `json:"maximum,omitempty"`
	Format     string   `json:"format,omitempty"`
	Alias      string   `json:"alias,omitempty"`
	KeyAlias   string   `json:"keyAlias,omitempty"`
}

//go:embed table.json
var tableJSON []byte

var (
	loadOnce sync.Once
	loaded   *Table
	loadErr  error
)

// Embedded returns the raw committed table (for the up-to-date test).
func Embedded() []byte { return tableJSON }

// Load parses the embedded table once.
func Load() (*Table, error) {
	loadOnce.Do(func() {
		var t Table
		if err := json.Unmarshal(tableJSON, &t); err != nil {
			loadErr = fmt.Errorf("apischema: embedded table: %w", err)
			return
		}
		loaded = &t
	})
	return loaded, loadErr
}

// Find returns the route for method and template path, or nil.
func (t *Table) Find(method, path string) *Route {
	for _, r := range t.Routes {
		if r.Method == method && r.Path == path {
			return r
		}
	}
	return nil
}

// Param returns the parameter definition for a wire name, resolving indexed
// names ("scsi0" → "scsi[n]"). ok is false for unknown names.
func (r *Route) Param(name string) (*Param, bool) {
	for _, p := range r.Params {
		if p.Name == name {
			return p, true
		}
	}
	base, idx, isIdx := splitIndexed(name)
	if !isIdx {
		return nil, false
	}
	for _, p := range r.Params {
		if p.Name == base+"[n]" && idx <= p.MaxIndex {
			return p, true
		}
	}
	return nil, false
}

func splitIndexed(name string) (string, int, bool) {
	i := len(name)
	for i > 0 && name[i-1] >= '0' && name[i-1] <= '9' {
		i--
	}
	if i == len(name) || i == 0 {
		return "", 0, false
	}
	// Leading zeros are not valid indices in PVE ("scsi01").
	if name[i] == '0' && len(name)-i > 1 {
		return "", 0, false
	}
	n := 0
	for _, c := range name[i:] {
		n = n*10 + int(c-'0')
		if n > 1000 {
			return "", 0, false
		}
	}
	return name[:i], n, true
}
