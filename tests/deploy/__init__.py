"""Offline checks of the deployment artefacts: the kustomize base and the Dockerfile."""
