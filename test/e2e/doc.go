// Package e2e is the end-to-end suite over the lab (test/lab), built with the Cluster API e2e
// framework: `make test-e2e` (build tag e2e). Without the tag the package is empty, so
// `go test ./...` never starts a lab.
package e2e
