package bootstrap

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strings"

	"go.yaml.in/yaml/v4"
)

// UserData returns the machine config (CABPT bootstrap data) followed by each extra Talos config
// document as a separate YAML document. The machine config bytes are passed through untouched:
// the output always starts with exactly machineConfig (only a newline is added after it when it
// lacks one, then "---" separators). With no extra documents the result equals machineConfig.
//
// Each extra document must be a single YAML mapping with apiVersion and kind (Talos' multi-doc
// config rejects anything else at boot, where it is much harder to diagnose). Errors never quote
// the documents, which hold secrets.
func UserData(machineConfig []byte, extraDocs ...[]byte) ([]byte, error) {
	if len(bytes.TrimSpace(machineConfig)) == 0 {
		return nil, errors.New("user-data: machine config is empty")
	}

	out := bytes.Clone(machineConfig)

	for i, doc := range extraDocs {
		if err := checkExtraDoc(doc); err != nil {
			return nil, fmt.Errorf("user-data: extra document %d: %w", i, err)
		}

		if !bytes.HasSuffix(out, []byte("\n")) {
			out = append(out, '\n')
		}

		// A config that already ends with a separator must not get an empty document.
		if !endsWithSeparator(out) {
			out = append(out, "---\n"...)
		}

		body := bytes.TrimPrefix(doc, []byte("---\n"))
		out = append(out, body...)
	}

	if len(extraDocs) > 0 && !bytes.HasSuffix(out, []byte("\n")) {
		out = append(out, '\n')
	}

	return out, nil
}

func endsWithSeparator(b []byte) bool {
	trimmed := bytes.TrimRight(b, "\n")
	last := trimmed[bytes.LastIndexByte(trimmed, '\n')+1:]

	return string(bytes.TrimSpace(last)) == "---"
}

func checkExtraDoc(doc []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(doc))

	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		// Deliberately not wrapping the YAML error: it may quote the offending (secret) value.
		return errors.New("not a YAML mapping")
	}

	if _, ok := m["apiVersion"]; !ok {
		return errors.New("missing apiVersion")
	}

	if _, ok := m["kind"]; !ok {
		return errors.New("missing kind")
	}

	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("must be exactly one YAML document")
	}

	return nil
}

// Tailscale configures the siderolabs/tailscale extension.
type Tailscale struct {
	// AuthKey is the Tailscale (or Headscale pre-auth) key, TS_AUTHKEY. Required.
	AuthKey string
	// LoginServer is the Headscale URL; it becomes --login-server in TS_EXTRA_ARGS.
	LoginServer string
	// Hostname overrides the node name in the tailnet (TS_HOSTNAME).
	Hostname string
	// Routes are advertised subnet routes (TS_ROUTES), e.g. the service CIDR.
	Routes []netip.Prefix
	// ExtraArgs are appended to TS_EXTRA_ARGS, one flag per entry.
	ExtraArgs []string
}

type extensionServiceConfig struct {
	APIVersion  string   `yaml:"apiVersion"`
	Kind        string   `yaml:"kind"`
	Name        string   `yaml:"name"`
	Environment []string `yaml:"environment"`
}

// TailscaleExtensionConfig renders the ExtensionServiceConfig document for the tailscale
// extension, to be appended to the machine config with UserData. It exists so the auth key can
// come from a Secret instead of sitting in plain text in a TalosConfigTemplate patch.
func TailscaleExtensionConfig(t Tailscale) ([]byte, error) {
	if t.AuthKey == "" || strings.ContainsAny(t.AuthKey, " \t\r\n") {
		return nil, errors.New("tailscale: auth key is empty or contains whitespace")
	}

	env := []string{"TS_AUTHKEY=" + t.AuthKey}

	if t.Hostname != "" {
		if err := ValidateHostname(t.Hostname); err != nil {
			return nil, fmt.Errorf("tailscale: %w", err)
		}

		env = append(env, "TS_HOSTNAME="+t.Hostname)
	}

	if len(t.Routes) > 0 {
		rs := make([]string, 0, len(t.Routes))

		for _, r := range t.Routes {
			if !r.IsValid() {
				return nil, errors.New("tailscale: invalid route prefix")
			}

			rs = append(rs, r.Masked().String())
		}

		env = append(env, "TS_ROUTES="+strings.Join(rs, ","))
	}

	var args []string

	if t.LoginServer != "" {
		u, err := url.Parse(t.LoginServer)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || strings.ContainsAny(t.LoginServer, " \t\r\n") {
			return nil, fmt.Errorf("tailscale: login server %q must be an http(s) URL", t.LoginServer)
		}

		args = append(args, "--login-server="+t.LoginServer)
	}

	for _, a := range t.ExtraArgs {
		// containerboot splits TS_EXTRA_ARGS on whitespace, so one entry must be one flag.
		if a == "" || strings.ContainsAny(a, " \t\r\n") {
			return nil, fmt.Errorf("tailscale: extra argument %q is empty or contains whitespace", a)
		}

		args = append(args, a)
	}

	if len(args) > 0 {
		env = append(env, "TS_EXTRA_ARGS="+strings.Join(args, " "))
	}

	return marshalYAML(extensionServiceConfig{
		APIVersion:  "v1alpha1",
		Kind:        "ExtensionServiceConfig",
		Name:        "tailscale",
		Environment: env,
	})
}
