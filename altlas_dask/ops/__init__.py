"""Operations: starting clusters and services, certificates, Kubernetes manifests, the self-test."""
