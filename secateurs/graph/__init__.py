"""Tracing and channel-dependency analysis."""

from .trace import ChannelGraph, ModuleUse, call_with, trace_channels

__all__ = ["ChannelGraph", "ModuleUse", "call_with", "trace_channels"]
