package imagefactory

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// Architectures the factory builds images for.
const (
	ArchAMD64 = "amd64"
	ArchARM64 = "arm64"
)

// Platforms this provider boots on Proxmox (see docs/images.md for nocloud vs metal).
const (
	PlatformNoCloud = "nocloud"
	PlatformMetal   = "metal"
)

// DiskImageFormat is the only disk format requested from the factory: Proxmox' download-url with
// content=import cannot decompress (.xz/.zst/.gz), and qcow2 is smaller on the wire than raw.
const DiskImageFormat = "qcow2"

// MaxPVEVolumeNameLength is the longest file name Proxmox accepts for a storage volume.
const MaxPVEVolumeNameLength = 255

var (
	schematicIDRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// Talos versions are "v"-prefixed semver; pre-release and build parts only use characters
	// Proxmox allows in volume names, so the version can be embedded without escaping.
	talosVersionRe = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)
	// Platform names never contain '-', which keeps StorageName parseable from the right.
	platformRe = regexp.MustCompile(`^[a-z][a-z0-9]*$`)
	// PVEImportNameRe is the rule Proxmox applies to file names imported with content=import.
	PVEImportNameRe = regexp.MustCompile(`^[a-zA-Z0-9\-.+=_]+\.(qcow2|raw|vmdk|ova)$`)
	// PVEISONameRe is the rule Proxmox applies to ISO file names in iso content.
	PVEISONameRe = regexp.MustCompile(`^[a-zA-Z0-9\-.+=_]+\.iso$`)
	unsafeNameRe = regexp.MustCompile(`[^a-zA-Z0-9\-.+=_]`)
)

// ValidateTalosVersion reports whether v looks like a Talos release tag ("v1.14.1").
func ValidateTalosVersion(v string) error {
	if !talosVersionRe.MatchString(v) {
		return fmt.Errorf("%w: %q is not a Talos version like v1.14.1", ErrInvalidVersion, v)
	}

	return nil
}

// ImageRef identifies one disk image built by the factory.
type ImageRef struct {
	// SchematicID is the 64-hex schematic ID (see SchematicID).
	SchematicID string
	// TalosVersion is the release tag, e.g. "v1.14.1".
	TalosVersion string
	// Platform is PlatformNoCloud or PlatformMetal (any lowercase alphanumeric name is accepted).
	Platform string
	// Arch is ArchAMD64 or ArchARM64.
	Arch string
	// SecureBoot selects the signed UKI variant of the image.
	SecureBoot bool
}

// Validate checks every component; the naming functions rely on it for injectivity.
func (r ImageRef) Validate() error {
	if !schematicIDRe.MatchString(r.SchematicID) {
		return fmt.Errorf("schematic ID %q is not 64 lowercase hex characters", r.SchematicID)
	}

	if err := ValidateTalosVersion(r.TalosVersion); err != nil {
		return err
	}

	if !platformRe.MatchString(r.Platform) {
		return fmt.Errorf("platform %q must be a lowercase name like %q or %q", r.Platform, PlatformNoCloud, PlatformMetal)
	}

	if r.Arch != ArchAMD64 && r.Arch != ArchARM64 {
		return fmt.Errorf("arch %q must be %q or %q", r.Arch, ArchAMD64, ArchARM64)
	}

	return nil
}

func (r ImageRef) profile() string {
	p := r.Platform + "-" + r.Arch
	if r.SecureBoot {
		p += "-secureboot"
	}

	return p
}

// FactoryFile is the file name the factory serves under /image/{schematic}/{version}/,
// e.g. "nocloud-amd64.qcow2".
func (r ImageRef) FactoryFile() string {
	return r.profile() + "." + DiskImageFormat
}

// FactoryPath is the URL path of the image on the factory.
func (r ImageRef) FactoryPath() string {
	return "/image/" + r.SchematicID + "/" + r.TalosVersion + "/" + r.FactoryFile()
}

// StorageName is the file name of the image in Proxmox storage (import content):
//
//	talos-<version>-<platform>-<arch>[-secureboot]-<schematic ID>.qcow2
//
// The full schematic ID is kept so that two schematics can never share a volume; the human
// readable parts come first so that `pvesm list` sorts by version. The name is injective (see
// ParseStorageName) and always matches PVEImportNameRe.
func (r ImageRef) StorageName() (string, error) {
	if err := r.Validate(); err != nil {
		return "", err
	}

	name := "talos-" + r.TalosVersion + "-" + r.profile() + "-" + r.SchematicID + "." + DiskImageFormat
	if len(name) > MaxPVEVolumeNameLength || !PVEImportNameRe.MatchString(name) {
		// Only reachable with absurd pre-release strings; refuse rather than truncate (collisions).
		return "", fmt.Errorf("image name %q is not a valid Proxmox import name", name)
	}

	return name, nil
}

// ParseStorageName reverses StorageName. It lets a garbage collector recognise the images this
// provider owns and which Talos version/schematic each one holds.
func ParseStorageName(name string) (ImageRef, error) {
	var r ImageRef

	bad := func() (ImageRef, error) {
		return ImageRef{}, fmt.Errorf("%q is not a Talos image name produced by StorageName", name)
	}

	rest, ok := strings.CutPrefix(name, "talos-")
	if !ok {
		return bad()
	}

	if rest, ok = strings.CutSuffix(rest, "."+DiskImageFormat); !ok || len(rest) < 66 {
		return bad()
	}

	r.SchematicID = rest[len(rest)-64:]
	rest = rest[:len(rest)-64]

	if rest, ok = strings.CutSuffix(rest, "-"); !ok {
		return bad()
	}

	rest, r.SecureBoot = strings.CutSuffix(rest, "-secureboot")

	i := strings.LastIndexByte(rest, '-')
	if i < 0 {
		return bad()
	}

	r.Arch, rest = rest[i+1:], rest[:i]

	if i = strings.LastIndexByte(rest, '-'); i < 0 {
		return bad()
	}

	r.Platform, r.TalosVersion = rest[i+1:], rest[:i]

	if err := r.Validate(); err != nil {
		return bad()
	}

	return r, nil
}

// ISOKind is the purpose of a per-VM ISO.
type ISOKind string

const (
	// ISOKindCIData is a nocloud cidata volume (user-data, meta-data, network-config).
	ISOKindCIData ISOKind = "cidata"
	// ISOKindMetalISO is a metal-iso volume (config.yaml) for talos.config=metal-iso.
	ISOKindMetalISO ISOKind = "metal-iso"
)

// ISOName is the file name of a per-VM boot ISO in Proxmox ISO storage:
//
//	talos-<kind>-<namespace>-<name>-<16 hex>.iso
//
// The hex suffix hashes kind, namespace, name and uid, so names stay unique even when the
// readable part is truncated or ambiguous ("a-b"/"c" vs "a"/"b-c"), and a Machine re-created
// with the same name (new UID) never picks up a stale ISO holding the old machine's secrets.
func ISOName(kind ISOKind, namespace, name, uid string) (string, error) {
	if kind != ISOKindCIData && kind != ISOKindMetalISO {
		return "", fmt.Errorf("unknown ISO kind %q", kind)
	}

	if name == "" || uid == "" {
		return "", fmt.Errorf("ISO name needs a machine name and UID")
	}

	sum := sha256.Sum256([]byte(string(kind) + "\x00" + namespace + "\x00" + name + "\x00" + uid))
	suffix := "-" + hex.EncodeToString(sum[:8]) + ".iso"
	prefix := "talos-" + string(kind) + "-"

	readable := unsafeNameRe.ReplaceAllString(namespace+"-"+name, "_")
	if room := MaxPVEVolumeNameLength - len(prefix) - len(suffix); len(readable) > room {
		readable = readable[:room]
	}

	return prefix + readable + suffix, nil
}
