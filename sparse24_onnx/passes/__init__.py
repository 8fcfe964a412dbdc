"""The pass pipeline: small passes over an onnx-ir model, each saying what it changed.

``optimize`` runs::

    Pipeline(FindWeights(exclude), [PermuteChannels(),] PruneWeights(method), [CompressWeights(),]
             RecordProvenance(method.name))
"""

from .base import PassResult, Pipeline, PipelineResult
from .compress_weights import CompressWeights
from .find_weights import FindWeights
from .permute_channels import PermuteChannels
from .provenance import PROVENANCE_KEY, RecordProvenance, read_provenance
from .prune_weights import InMemory, PruneWeights, TensorSink

__all__ = [
    "PROVENANCE_KEY",
    "CompressWeights",
    "FindWeights",
    "InMemory",
    "PassResult",
    "PermuteChannels",
    "Pipeline",
    "PipelineResult",
    "PruneWeights",
    "RecordProvenance",
    "TensorSink",
    "read_provenance",
]
