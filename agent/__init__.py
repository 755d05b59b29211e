"""kvmplat.agent: the per-host agent that runs KVM guests with a declared platform."""

__version__ = "0.1.0"
