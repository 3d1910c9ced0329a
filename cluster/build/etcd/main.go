// etcd, built from the go.etcd.io/etcd/server module: what the upstream etcd binary's main does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
