"""The local Kubernetes control plane for tests: starter (controlplane), pytest fixtures (plugin)."""
