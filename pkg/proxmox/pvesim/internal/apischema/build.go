package apischema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

type rawNode struct {
	Path     string               `json:"path"`
	Info     map[string]rawMethod `json:"info"`
	Children []rawNode            `json:"children"`
}

type rawMethod struct {
	Name        string `json:"name"`
	Proxyto     string `json:"proxyto"`
	Permissions struct {
		Check json.RawMessage `json:"check"`
		User  string          `json:"user"`
	} `json:"permissions"`
	Parameters struct {
		Properties map[string]map[string]json.RawMessage `json:"properties"`
	} `json:"parameters"`
}

func index(data []byte) (map[string]rawNode, error) {
	var roots []rawNode
	if err := json.Unmarshal(data, &roots); err != nil {
		return nil, err
	}
	out := map[string]rawNode{}
	var walk func(n rawNode)
	walk = func(n rawNode) {
		out[n.Path] = n
		for _, c := range n.Children {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return out, nil
}

// indexLimits are qemu-server's device limits for indexed options whose
// schema description does not state "(n is 0 to N)".
var indexLimits = map[string]int{"net[n]": 31, "ipconfig[n]": 31, "hostpci[n]": 15, "numa[n]": 7,
	"unused[n]": 255, "usb[n]": 13, "virtiofs[n]": 9}

var maxIndexRe = regexp.MustCompile(`\(n is 0 to (\d+)\)`)

// Build derives the table for the Served routes from the 9.1 schema, noting
// 8.4 differences (params only in 9.1, differing permission checks).
func Build(pve84, pve91 []byte) ([]byte, error) {
	i84, err := index(pve84)
	if err != nil {
		return nil, fmt.Errorf("8.4 schema: %w", err)
	}
	i91, err := index(pve91)
	if err != nil {
		return nil, fmt.Errorf("9.1 schema: %w", err)
	}
	t := Table{Source: "pve-9.1-apidata.json (PVE 9.1.3), 8.4 differences from pve-8.4-apidata.json (PVE 8.4.2)"}
	for _, s := range Served {
		n91, ok := i91[s.Path]
		if !ok {
			return nil, fmt.Errorf("9.1 schema lacks path %s", s.Path)
		}
		m91, ok := n91.Info[s.Method]
		if !ok {
			return nil, fmt.Errorf("9.1 schema lacks %s %s", s.Method, s.Path)
		}
		var m84 *rawMethod
		if n84, ok := i84[s.Path]; ok {
			if m, ok := n84.Info[s.Method]; ok {
				m84 = &m
			}
		}
		r := &Route{Method: s.Method, Path: s.Path, Name: m91.Name, User: m91.Permissions.User, Proxyto: m91.Proxyto}
		if len(m91.Permissions.Check) > 0 {
			r.Check = compact(m91.Permissions.Check)
		}
		if m84 != nil && len(m84.Permissions.Check) > 0 && !bytes.Equal(compact(m84.Permissions.Check), r.Check) {
			r.Check84 = compact(m84.Permissions.Check)
		}
		names := make([]string, 0, len(m91.Parameters.Properties))
		for name := range m91.Parameters.Properties {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			p, err := convertParam(name, m91.Parameters.Properties[name])
			if err != nil {
				return nil, fmt.Errorf("%s %s %s: %w", s.Method, s.Path, name, err)
			}
			if m84 != nil {
				if _, ok := m84.Parameters.Properties[name]; !ok {
					p.Only91 = true
				}
			}
			r.Params = append(r.Params, p)
		}
		t.Routes = append(t.Routes, r)
	}
	out, err := json.MarshalIndent(t, "", " ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

func compact(b json.RawMessage) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return b
	}
	return buf.Bytes()
}

type rawSchema struct {
	Type        string          `json:"type"`
	Optional    json.Number     `json:"optional"`
	Enum        []string        `json:"enum"`
	Pattern     string          `json:"pattern"`
	Minimum     flexNum         `json:"minimum"`
	Maximum     flexNum         `json:"maximum"`
	MaxLength   flexNum         `json:"maxLength"`
	Format      json.RawMessage `json:"format"`
	Requires    string          `json:"requires"`
	Description string          `json:"description"`
	DefaultKey  json.Number     `json:"default_key"`
	Alias       string          `json:"alias"`
	KeyAlias    string          `json:"keyAlias"`
}

func decodeSchema(raw map[string]json.RawMessage) (rawSchema, error) {
	b, err := json.Marshal(raw)
	if err != nil {
		return rawSchema{}, err
	}
	var s rawSchema
	err = json.Unmarshal(b, &s)
	return s, err
}

func convertParam(name string, raw map[string]json.RawMessage) (*Param, error) {
	s, err := decodeSchema(raw)
	if err != nil {
		return nil, err
	}
	p := &Param{Name: name, Type: s.Type, Optional: s.Optional == "1", Enum: s.Enum, Pattern: s.Pattern,
		Minimum: s.Minimum.f, Maximum: s.Maximum.f, MaxLength: s.MaxLength.int(), Requires: s.Requires}
	if p.Type == "" {
		p.Type = "string"
	}
	if m := maxIndexRe.FindStringSubmatch(s.Description); m != nil {
		fmt.Sscanf(m[1], "%d", &p.MaxIndex)
	} else if n, ok := indexLimits[name]; ok {
		p.MaxIndex = n
	}
	if len(s.Format) > 0 {
		if s.Format[0] == '"' {
			_ = json.Unmarshal(s.Format, &p.Format)
		} else {
			var keys map[string]map[string]json.RawMessage
			if err := json.Unmarshal(s.Format, &keys); err != nil {
				return nil, err
			}
			p.Keys = map[string]*Key{}
			for kn, kraw := range keys {
				ks, err := decodeSchema(kraw)
				if err != nil {
					return nil, err
				}
				k := &Key{Type: ks.Type, Optional: ks.Optional == "1", DefaultKey: ks.DefaultKey == "1", Enum: ks.Enum,
					Pattern: ks.Pattern, Minimum: ks.Minimum.f, Maximum: ks.Maximum.f, Alias: ks.Alias, KeyAlias: ks.KeyAlias}
				if len(ks.Format) > 0 && ks.Format[0] == '"' {
					_ = json.Unmarshal(ks.Format, &k.Format)
				}
				p.Keys[kn] = k
			}
		}
	}
	return p, nil
}

// flexNum accepts numbers written either as JSON numbers or strings: the
// schema dump has both (e.g. bwlimit's minimum is "0").
type flexNum struct{ f *float64 }

func (n *flexNum) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	n.f = &v
	return nil
}

func (n flexNum) int() *int {
	if n.f == nil {
		return nil
	}
	v := int(*n.f)
	return &v
}
