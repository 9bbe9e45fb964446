"""Names shared by the plugin's modules: Scipion variables and file layout."""

# Folder holding cisTEM 2's refine2d and merge2d (the cisTEM engine only; the built-in engine
# needs nothing). Empty = $CISTEM_HOME/bin, then PATH, as the core looks for them.
LIVE2D_CISTEM_BIN = "LIVE2D_CISTEM_BIN"
# Device of the built-in engine: auto (CUDA when PyTorch sees a GPU), cpu, cuda or cuda:N.
LIVE2D_DEVICE = "LIVE2D_DEVICE"

ENGINES = ("auto", "builtin", "cistem")
ENGINE_LABELS = ("auto", "built-in", "cisTEM")
PARTICLE_FILE_LABELS = ("all particles", "good particles")
