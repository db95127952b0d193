"""edgeyolo: darknet-cfg YOLO models made small and fast on edge boards."""

__version__ = "0.1.0"
