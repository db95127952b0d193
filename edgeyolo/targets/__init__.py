"""Deployment targets: board profiles and families, transports and runners. Never imports torch.

Importing the package registers the built-in board families, before any profile names one.
"""
from edgeyolo.targets import host as _host  # noqa: F401 - registers the host family
from edgeyolo.targets.jetson import family as _jetson  # noqa: F401 - registers the jetson family
from edgeyolo.targets.zynq import family as _zynq  # noqa: F401 - registers the zynq family
