//go:build tools

// BuildKit (daemon and client) and RootlessKit for the in-cluster image builder; listed here
// so go.mod pins their dependencies (cluster/versions.env pins the versions).
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
	_ "github.com/rootless-containers/rootlesskit/v3/cmd/rootlesskit"
)
