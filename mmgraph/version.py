"""mmgraph's version, in a leaf module: generated code and manifests name it without importing
the package's API (which would tie the torch backend to the compiler)."""

__version__ = "0.1.0"
