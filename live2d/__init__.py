"""Live2D: live 2D classification of cryo-EM particles while Warp is still collecting."""

__version__ = "0.1.0"
