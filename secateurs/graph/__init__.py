"""Tracing and channel-dependency analysis."""

from .rules import OP_RULES
from .trace import (
    ChannelGraph,
    ModuleUse,
    Tracer,
    call_with,
    channel_stats,
    example_signature,
    measure_inputs,
    output_leaves,
    plain_name,
    trace_channels,
)

__all__ = ["OP_RULES", "ChannelGraph", "ModuleUse", "Tracer", "call_with", "channel_stats", "example_signature", "measure_inputs", "output_leaves", "plain_name",
           "trace_channels"]
