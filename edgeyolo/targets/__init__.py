"""Deployment targets: board profiles, transports and runners. Never imports torch."""
