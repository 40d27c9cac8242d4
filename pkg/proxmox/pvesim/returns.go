package pvesim

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// ResponseRecord is one successful API response pvesim sent: the route
// template and the raw body ({"data": ...}).
type ResponseRecord struct {
	Method string
	Route  string
	Status int
	Body   []byte
}

// OnResponse registers a hook called with every successful response (tests
// use it to check responses against the official schema with CheckReturns).
func (s *Server) OnResponse(fn func(ResponseRecord)) {
	s.hookMu.Lock()
	s.onResponse = append(s.onResponse, fn)
	s.hookMu.Unlock()
}

func (s *Server) fireResponse(r ResponseRecord) {
	s.hookMu.Lock()
	hooks := append([]func(ResponseRecord){}, s.onResponse...)
	s.hookMu.Unlock()
	for _, h := range hooks {
		h(r)
	}
}

var (
	returnsMu    sync.Mutex
	returnsCache = map[string]map[string]map[string]any{}
)

// loadReturns indexes an apidata file: path → method → returns schema.
func loadReturns(file string) (map[string]map[string]any, error) {
	returnsMu.Lock()
	defer returnsMu.Unlock()
	if idx, ok := returnsCache[file]; ok {
		return idx, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	type node struct {
		Path     string                    `json:"path"`
		Info     map[string]map[string]any `json:"info"`
		Children []node                    `json:"children"`
	}
	var roots []node
	if err := json.Unmarshal(b, &roots); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	idx := map[string]map[string]any{}
	var walk func(n node)
	walk = func(n node) {
		for m, info := range n.Info {
			if idx[n.Path] == nil {
				idx[n.Path] = map[string]any{}
			}
			idx[n.Path][m] = info["returns"]
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	returnsCache[file] = idx
	return idx, nil
}

// CheckReturns validates the data of a response body against the `returns`
// schema of method+route in the official PVE API schema file (pve-docs
// apidata, e.g. ../shared/pve-api/pve-9.1-apidata.json), with the rules of
// PVE::JSONSchema's check_prop: types as Perl scalars are checked (an
// integer may be a numeric string), required properties must be present,
// enums and minimum/maximum hold, additionalProperties=0 forbids unknown
// keys; indexed keys (net0) use the schema's net[n]. Property-string
// formats are not parsed.
func CheckReturns(schemaFile, method, route string, body []byte) error {
	idx, err := loadReturns(schemaFile)
	if err != nil {
		return err
	}
	methods, ok := idx[route]
	if !ok {
		return fmt.Errorf("%s %s: route not in %s", method, route, schemaFile)
	}
	sch, ok := methods[method]
	if !ok {
		return fmt.Errorf("%s %s: method not in %s", method, route, schemaFile)
	}
	var env map[string]any
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&env); err != nil {
		return fmt.Errorf("%s %s: body is not a JSON object: %w", method, route, err)
	}
	data, ok := env["data"]
	if !ok {
		return fmt.Errorf("%s %s: body has no data", method, route)
	}
	var errs []string
	schema, _ := sch.(map[string]any)
	checkProp("data", schema, data, &errs)
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("%s %s: response does not match the returns schema:\n  %s", method, route, strings.Join(errs, "\n  "))
	}
	return nil
}

var (
	reInteger = regexp.MustCompile(`^-?\d+$`)
	reNumber  = regexp.MustCompile(`^-?\d*\.?\d+(?:[eE][-+]?\d+)?$`)
)

// scalarText is a JSON scalar as Perl would stringify it (ok=false for
// objects, arrays and null).
func scalarText(v any) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case json.Number:
		return t.String(), true
	case bool:
		if t {
			return "1", true
		}
		return "0", true
	}
	return "", false
}

func checkProp(path string, schema map[string]any, v any, errs *[]string) {
	if schema == nil {
		return
	}
	add := func(format string, args ...any) { *errs = append(*errs, path+": "+fmt.Sprintf(format, args...)) }
	typ, _ := schema["type"].(string)
	if typ == "" {
		switch {
		case schema["properties"] != nil:
			typ = "object"
		case schema["items"] != nil:
			typ = "array"
		default:
			return
		}
	}
	if v == nil {
		// PVE::JSONSchema::check_prop: an undefined value is fine for type null and for
		// an optional schema (DELETE .../content/{volume} returns an optional string:
		// null when it waited for its worker).
		if typ != "null" && typ != "any" && !isTrueAny(schema["optional"]) {
			add("got null, want %s", typ)
		}
		return
	}
	switch typ {
	case "any":
		return
	case "null":
		add("want null, got %T", v)
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			add("want object, got %T", v)
			return
		}
		props, _ := schema["properties"].(map[string]any)
		for name, ps := range props {
			p, _ := ps.(map[string]any)
			if strings.HasSuffix(name, "[n]") {
				continue
			}
			if _, present := obj[name]; !present {
				if !isTrueAny(p["optional"]) {
					*errs = append(*errs, path+"."+name+": property is missing and it is not optional")
				}
			}
		}
		for k, val := range obj {
			ps, ok := props[k]
			if !ok {
				ps, ok = props[strings.TrimRight(k, "0123456789")+"[n]"]
			}
			if !ok {
				if ap, set := schema["additionalProperties"]; set && !isTrueAny(ap) {
					*errs = append(*errs, path+"."+k+": property is not defined in schema and the schema does not allow additional properties")
				}
				continue
			}
			p, _ := ps.(map[string]any)
			checkProp(path+"."+k, p, val, errs)
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			add("want array, got %T", v)
			return
		}
		items, _ := schema["items"].(map[string]any)
		for i, e := range arr {
			checkProp(fmt.Sprintf("%s[%d]", path, i), items, e, errs)
		}
	case "string", "integer", "number", "boolean":
		txt, ok := scalarText(v)
		if !ok {
			add("want %s, got %T", typ, v)
			return
		}
		switch typ {
		case "integer":
			if !reInteger.MatchString(txt) {
				add("type check ('integer') failed - got '%s'", txt)
				return
			}
		case "number":
			if !reNumber.MatchString(txt) {
				add("type check ('number') failed - got '%s'", txt)
				return
			}
		case "boolean":
			switch strings.ToLower(txt) {
			case "0", "1", "true", "false", "yes", "no", "on", "off":
			default:
				add("type check ('boolean') failed - got '%s'", txt)
				return
			}
		}
		if enum, ok := schema["enum"].([]any); ok {
			found := false
			for _, e := range enum {
				if fmt.Sprint(e) == txt {
					found = true
				}
			}
			if !found {
				add("value '%s' does not have a value in the enumeration", txt)
			}
		}
		if typ == "integer" || typ == "number" {
			var f float64
			fmt.Sscan(txt, &f)
			if m, ok := schema["minimum"].(float64); ok && f < m {
				add("value must have a minimum value of %v", m)
			}
			if m, ok := schema["maximum"].(float64); ok && f > m {
				add("value must have a maximum value of %v", m)
			}
		}
	}
}

func isTrueAny(v any) bool {
	switch t := v.(type) {
	case bool:
		return t
	case float64:
		return t != 0
	case string:
		return isTrue(t)
	}
	return false
}
