// Package controllers holds the thin reconcilers of ProxmoxTalosCluster and
// ProxmoxTalosMachine: they fetch the objects and their Cluster API owners, honour pause
// and external management, keep the finalizer, patch the object on the way out with a
// Ready summary, and hand the real work to the step machines in internal/cluster and
// internal/machine.
package controllers

import (
	"github.com/proxmox-talos/cluster-api-provider-proxmox-talos/internal/clients"
)

// ProxmoxClientFactory builds the Proxmox client of a cluster from its credentials
// Secret. clients.NewProxmoxFactory returns the caching production implementation.
type ProxmoxClientFactory = clients.ProxmoxFactory

// ImageFactoryFactory returns an Image Factory client per base URL.
// clients.NewImageFactoryFactory returns the caching production implementation.
type ImageFactoryFactory = clients.ImageFactoryFactory
