"""cmbuild: turn an OCI image into a reproducible Cartesi Machine snapshot."""

__version__ = "0.1.0"
