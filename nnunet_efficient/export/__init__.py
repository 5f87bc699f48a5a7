"""Export of trained networks to ONNX (``nnunet-efficient export``); see :mod:`.onnx` and :mod:`.architectures`."""

from nnunet_efficient.export.architectures import (
    ARCHITECTURES,
    ArchitectureSpec,
    ExportContext,
    ExportPart,
    architecture_of,
    register_architecture,
)
from nnunet_efficient.export.onnx import DEFAULT_TOLERANCE, ExportReport, export_model_folder

__all__ = ["ARCHITECTURES", "DEFAULT_TOLERANCE", "ArchitectureSpec", "ExportContext", "ExportPart", "ExportReport",
           "architecture_of", "export_model_folder", "register_architecture"]
