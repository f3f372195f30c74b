"""Models built from an Arch: ``build_model(arch_or_registered_name)``; registered archs in ``zoo``."""
from nas.models.build import build_model
from nas.models.vit import SharedPair, VisionTransformer, run_cells
from nas.models.zoo import get_arch, list_archs, register_arch

__all__ = ["build_model", "VisionTransformer", "SharedPair", "run_cells", "get_arch", "list_archs",
           "register_arch"]
