// Package version holds the build's version, set by the linker:
//
//	-ldflags "-X github.com/sidekey/sidekey/internal/version.Version=v0.1.0"
package version

import "runtime/debug"

// Version is the release version; "dev" for a local build.
var Version = "dev"

// String returns the version and, when the build recorded it, the VCS revision.
func String() string {
	s := Version
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range info.Settings {
			if kv.Key == "vcs.revision" && len(kv.Value) >= 12 {
				s += " (" + kv.Value[:12] + ")"
			}
		}
	}
	return s
}
