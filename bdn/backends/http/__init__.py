"""Read-only ``http(s)://`` stores (a mirrored store behind any web server)."""
