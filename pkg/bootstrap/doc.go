// Package bootstrap renders everything a Talos VM on Proxmox needs to configure itself at first
// boot: nocloud meta-data and network-config, the Talos PlatformNetworkConfig for META key 10
// (metal platform), user-data with optional extra Talos documents (e.g. Tailscale), and the
// cidata / metal-iso ISO images carrying them.
//
// Every function is a pure renderer: values in, bytes out. Nothing is logged and errors never
// quote input bytes, because the machine config (user-data) carries cluster PKI and the extra
// documents may carry auth keys. The ISO builders stage files in a private temporary directory
// (go-diskfs requires one) that is removed before returning.
package bootstrap
