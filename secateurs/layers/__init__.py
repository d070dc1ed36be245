"""Layer families: one small class per family of layers, in one registry (``LAYERS``).

Every part of the library (the tracer, the pruners, the speedup engine, FLOPs counting)
asks the family of a module, found by :meth:`LayerRegistry.family_of`, instead of
testing module types itself.
"""

from ._base import LAYERS, LayerFamily, LayerRegistry, stored
from .attention import MultiheadAttention
from .batch_norm import BatchNorm, InstanceNorm
from .conv import Conv
from .conv_transpose import ConvTranspose
from .embedding import Embedding
from .group_norm import GroupNorm
from .hf_conv1d import HFConv1D
from .layer_norm import LayerNorm
from .linear import Linear
from .prelu import PReLU
from .split_attention import SplitMultiheadAttention, split_multihead_attention

for _family in (Conv(), ConvTranspose(), Linear(), HFConv1D(), BatchNorm(), InstanceNorm(), GroupNorm(),
                LayerNorm(), PReLU(), Embedding(), MultiheadAttention()):
    LAYERS.register(_family)

family_of = LAYERS.family_of

__all__ = ["LAYERS", "LayerFamily", "LayerRegistry", "SplitMultiheadAttention", "family_of",
           "split_multihead_attention", "stored"]
