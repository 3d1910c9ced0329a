// The CNCF distribution registry (what the registry:3 image runs), built from its Go module.
package main

import (
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"

	"github.com/distribution/distribution/v3/registry"
)

func main() {
	_ = registry.RootCmd.Execute()
}
