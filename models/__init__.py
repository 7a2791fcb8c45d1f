"""Detectors: the registry front door, the hybrid reference, single-backbone and frequency detectors.

Importing the package registers every torch detector, so `create_detector` knows them all.
"""

from models.freezing import apply_freeze, format_parameter_table, parameter_table
from models.frequency import FrequencyDetector, azimuthal_spectrum_features
from models.hybrid import HybridModel
from models.protocol import Detector
from models.registry import create_detector, list_detectors, register_detector
from models.single import SingleBackboneDetector

__all__ = [
    "Detector",
    "FrequencyDetector",
    "HybridModel",
    "SingleBackboneDetector",
    "apply_freeze",
    "azimuthal_spectrum_features",
    "create_detector",
    "format_parameter_table",
    "list_detectors",
    "parameter_table",
    "register_detector",
]
