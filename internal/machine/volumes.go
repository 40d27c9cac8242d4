package machine

import (
	"slices"
	"strings"

	infrav1 "github.com/proxmox-talos/cluster-api-provider-proxmox-talos/api/v1beta1"
)

// Volumes a machine creates outside its VM (its boot ISO, a metal image) are recorded in
// spec.ownedVolumes before they are created. Deletion removes exactly what is recorded:
// the names are never recomputed from a spec or an object UID that may have changed
// since (a `clusterctl move` gives every object a new UID).

// recordVolume adds a volume to spec.ownedVolumes; it reports whether it was new (the
// caller then persists before creating it).
func recordVolume(s *Scope, node, volid string) bool {
	if slices.ContainsFunc(s.PTM.Spec.OwnedVolumes, func(v infrav1.OwnedVolume) bool { return v.VolID == volid && v.Node == node }) {
		return false
	}
	s.PTM.Spec.OwnedVolumes = append(s.PTM.Spec.OwnedVolumes, infrav1.OwnedVolume{Node: node, VolID: volid})
	return true
}

// forgetVolume removes a deleted volume from spec.ownedVolumes.
func forgetVolume(s *Scope, v infrav1.OwnedVolume) {
	s.PTM.Spec.OwnedVolumes = slices.DeleteFunc(s.PTM.Spec.OwnedVolumes, func(o infrav1.OwnedVolume) bool { return o == v })
	if len(s.PTM.Spec.OwnedVolumes) == 0 {
		s.PTM.Spec.OwnedVolumes = nil
	}
}

// ownedVolumes returns the recorded volumes of one content type ("iso", "import").
func ownedVolumes(s *Scope, content string) []infrav1.OwnedVolume {
	var out []infrav1.OwnedVolume
	for _, v := range s.PTM.Spec.OwnedVolumes {
		if _, rest, ok := strings.Cut(v.VolID, ":"); ok && strings.HasPrefix(rest, content+"/") {
			out = append(out, v)
		}
	}
	return out
}
