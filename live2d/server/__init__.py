"""The standalone web app: the live page of the original Live2D over the same core loop."""
