package imagefactory

import "errors"

// Sentinel errors; match with errors.Is. Errors returned by Client also wrap the upstream
// *client.HTTPError (status code and body) where an HTTP response was received.
var (
	// ErrInvalidSchematic: the schematic was rejected locally or by the factory (HTTP 400).
	ErrInvalidSchematic = errors.New("invalid schematic")
	// ErrInvalidVersion: the string is not a Talos version tag.
	ErrInvalidVersion = errors.New("invalid Talos version")
	// ErrUnknownVersion: the factory does not know the Talos version.
	ErrUnknownVersion = errors.New("unknown Talos version")
	// ErrSchematicNotFound: the factory has no schematic with that ID (POST it first).
	ErrSchematicNotFound = errors.New("schematic not found")
	// ErrImageNotFound: unknown schematic, version or file on an image request.
	ErrImageNotFound = errors.New("image not found")
	// ErrSchematicIDMismatch: the factory computed a different ID than the offline computation,
	// meaning the canonical form changed upstream and storage names would be wrong.
	ErrSchematicIDMismatch = errors.New("schematic ID mismatch between factory and offline computation")
	// ErrRetriesExhausted: transient failures (5xx, 429, transport errors) persisted.
	ErrRetriesExhausted = errors.New("image factory still failing after retries")
)
