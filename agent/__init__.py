"""katago-edge: KataGo networks on edge devices."""

__version__ = "0.1.0"
