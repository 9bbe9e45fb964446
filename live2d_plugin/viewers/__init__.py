"""The plugin's viewers."""

from live2d_plugin.viewers.viewer_classify2d import Live2DViewer

__all__ = ["Live2DViewer"]
