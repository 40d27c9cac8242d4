// Package templates holds the tests of the clusterctl flavors in templates/ (there is no
// non-test code). They prove that:
//
//   - the committed flavors are exactly what hack/gen-templates.sh assembles from
//     templates/src and addons/;
//   - the variables of every flavor, with their defaults, are exactly the table in
//     docs/templates.md;
//   - the real clusterctl (built and cached by hack/lab-binaries.sh) generates every flavor
//     from a local repository with only the required documented variables set, and with every
//     documented variable set to a non-default value; `--list-variables` agrees with the docs;
//   - every generated object has the expected kind and namespace, decodes strictly into our
//     API types (or CAPI's), passes our webhook validation, conforms to its CRD schema (where
//     the CRD is available) and references objects that exist; the embedded Talos patches,
//     kube-vip manifest, Tailscale document, MetalLB pools and Flux objects parse.
//   - the topology flavor pulls in templates/clusterclass-proxmox-talos.yaml, whose objects
//     conform to their CRDs (including the optional TalosControlPlaneTemplate CRD) and
//     reference each other consistently; that CRD is what hack/gen-tcp-template-crd.go
//     derives from CACPPT's.
//
// The clusterctl tests skip when the cached clusterctl is missing, unless CI is set, in which
// case they fail. CLUSTERCTL overrides the binary's path.
package templates
