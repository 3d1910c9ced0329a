"""A real single-node Kubernetes on this machine, built from upstream components (`make cluster`)."""
