package imagefactory

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/siderolabs/image-factory/pkg/schematic"
	"k8s.io/utils/lru"
)

// Schematic is the Image Factory schematic document. It is an alias of the upstream type so that
// the canonical serialisation (and therefore the ID) is exactly the one the factory computes: the
// factory hashes the output of the same Marshal function, so sharing the type is the only way to
// stay byte-for-byte equal when upstream adds fields.
type Schematic = schematic.Schematic

// MetaValue is one initial META partition entry of a schematic.
type MetaValue = schematic.MetaValue

// Well-known official extensions used by this provider.
const (
	// ExtensionQEMUGuestAgent lets Proxmox read guest IPs via agent/network-get-interfaces.
	ExtensionQEMUGuestAgent = "siderolabs/qemu-guest-agent"
	// ExtensionTailscale runs tailscale's containerboot as a Talos extension service.
	ExtensionTailscale = "siderolabs/tailscale"
)

// MetaKeyNetworkPlatformConfig is META key 10 (0x0a), MetalNetworkPlatformConfig: a
// PlatformConfigSpec YAML read by the metal platform only.
const MetaKeyNetworkPlatformConfig uint8 = 0x0a

// DefaultExtensions returns the official extensions a schematic gets when the caller does not
// choose any. A fresh slice is returned so callers can never mutate the defaults.
func DefaultExtensions() []string {
	return []string{ExtensionQEMUGuestAgent, ExtensionTailscale}
}

// SchematicOptions describes the customisation this provider puts into a schematic.
//
// Order is significant everywhere: the factory neither sorts nor deduplicates, so two lists with
// the same members in a different order are two different schematics (and two image downloads).
// Callers should therefore pass lists in a stable order, e.g. straight from the API object.
type SchematicOptions struct {
	// Extensions are official extension names ("siderolabs/<name>"). nil selects
	// DefaultExtensions; an empty non-nil slice means "no extensions at all".
	Extensions []string
	// ExtraKernelArgs are appended to the kernel command line, e.g. "talos.config=metal-iso".
	ExtraKernelArgs []string
	// Meta are initial META values; keys must be unique.
	Meta []MetaValue
}

// NewSchematic validates opts and builds the schematic. It never contacts the factory.
func NewSchematic(opts SchematicOptions) (*Schematic, error) {
	exts := opts.Extensions
	if exts == nil {
		exts = DefaultExtensions()
	}

	var errs []error

	seen := map[string]bool{}

	for _, e := range exts {
		switch {
		case e == "" || strings.ContainsAny(e, " \t\r\n"):
			errs = append(errs, fmt.Errorf("extension name %q is empty or contains whitespace", e))
		case !strings.Contains(e, "/"):
			errs = append(errs, fmt.Errorf("extension name %q must be qualified, e.g. siderolabs/%s", e, e))
		case seen[e]:
			// A duplicate would silently create a distinct schematic ID for the same image content.
			errs = append(errs, fmt.Errorf("extension %q listed twice", e))
		}

		seen[e] = true
	}

	for _, a := range opts.ExtraKernelArgs {
		if a == "" || strings.ContainsAny(a, " \t\r\n") {
			errs = append(errs, fmt.Errorf("kernel argument %q is empty or contains whitespace (pass one argument per entry)", a))
		}
	}

	keys := map[uint8]bool{}

	for _, m := range opts.Meta {
		if keys[m.Key] {
			errs = append(errs, fmt.Errorf("META key 0x%x listed twice", m.Key))
		}

		keys[m.Key] = true
	}

	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSchematic, err)
	}

	s := &Schematic{}
	s.Customization.SystemExtensions.OfficialExtensions = slices.Clone(exts)
	s.Customization.ExtraKernelArgs = slices.Clone(opts.ExtraKernelArgs)
	s.Customization.Meta = slices.Clone(opts.Meta)

	// Empty slices must be nil so that they are omitted exactly like the factory omits them.
	if len(s.Customization.SystemExtensions.OfficialExtensions) == 0 {
		s.Customization.SystemExtensions.OfficialExtensions = nil
	}

	if len(s.Customization.ExtraKernelArgs) == 0 {
		s.Customization.ExtraKernelArgs = nil
	}

	if len(s.Customization.Meta) == 0 {
		s.Customization.Meta = nil
	}

	return s, nil
}

// CanonicalYAML returns the bytes the factory hashes to derive the schematic ID (go.yaml.in/yaml/v4,
// 4-space indent, empty fields omitted).
func CanonicalYAML(s *Schematic) ([]byte, error) {
	b, err := s.Marshal()
	if err != nil {
		return nil, fmt.Errorf("marshal schematic: %w", err)
	}

	return b, nil
}

// SchematicID computes the schematic ID offline: hex(sha256(CanonicalYAML(s))). It equals the ID
// the factory returns from POST /schematics, which lets the controller name and look up images in
// Proxmox storage before (or without) talking to the factory. The schematic must still be POSTed
// before downloading: the factory serves only schematics it has stored.
//
// IDs are remembered per content: the controllers ask on every pass of every machine (and
// the image collector for every machine of every cluster), and each computation marshals
// YAML; at 1000 machines that was a fifth of the manager's allocations.
func SchematicID(s *Schematic) (string, error) {
	key, ok := idKey(s)
	if ok {
		if id, found := schematicIDs.Get(key); found {
			return id.(string), nil
		}
	}

	id, err := s.ID()
	if err != nil {
		return "", fmt.Errorf("schematic ID: %w", err)
	}

	if ok {
		schematicIDs.Add(key, id)
	}

	return id, nil
}

// idKey is an exact, unambiguous encoding of the parts of s this package sets (extensions,
// kernel arguments, META values). A schematic with anything else set (an overlay, an
// owner, other customization) gets no key and its ID is always computed.
func idKey(s *Schematic) (string, bool) {
	rest := *s
	rest.Customization.SystemExtensions.OfficialExtensions = nil
	rest.Customization.ExtraKernelArgs = nil
	rest.Customization.Meta = nil

	if !reflect.DeepEqual(rest, Schematic{}) {
		return "", false
	}

	var b strings.Builder

	field := func(v string) {
		b.WriteString(strconv.Itoa(len(v)))
		b.WriteByte(':')
		b.WriteString(v)
	}
	list := func(vs []string) {
		b.WriteString(strconv.Itoa(len(vs)))
		b.WriteByte('[')

		for _, v := range vs {
			field(v)
		}
	}

	list(s.Customization.SystemExtensions.OfficialExtensions)
	list(s.Customization.ExtraKernelArgs)
	b.WriteString(strconv.Itoa(len(s.Customization.Meta)))
	b.WriteByte('[')

	for _, m := range s.Customization.Meta {
		b.WriteString(strconv.Itoa(int(m.Key)))
		b.WriteByte('=')
		field(m.Value)
	}

	return b.String(), true
}

// maxRememberedIDs bounds the memory of schematicIDs: a manager sees one schematic per
// (extensions, kernel arguments) shared image and one per metal machine.
const maxRememberedIDs = 4096

// schematicIDs remembers computed IDs, least recently used first out (a recomputation is
// only a cost, never a different answer).
var schematicIDs = lru.New(maxRememberedIDs)

// ParseSchematic decodes a schematic document strictly (unknown fields are rejected, like the
// factory does).
func ParseSchematic(data []byte) (*Schematic, error) {
	s, err := schematic.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSchematic, err)
	}

	return s, nil
}
