"""Gate services: the parts that do IO (storage, networking, the gateway), run under trio."""
