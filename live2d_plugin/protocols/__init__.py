"""The plugin's protocols (their class names are public API)."""

from live2d_plugin.protocols.protocol_classify2d import ProtLive2DClassify2D
from live2d_plugin.protocols.protocol_import_warp import ProtLive2DImportWarp

__all__ = ["ProtLive2DClassify2D", "ProtLive2DImportWarp"]
