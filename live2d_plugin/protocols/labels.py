"""How the plugin's protocols are named in Scipion's project window.

Scipion names a new run "<plugin> - <label>" with the plugin's package name, ``live2d_plugin``:
its underscores read as emphasis markup where Scipion renders text (the Methods tab shows
"live2dplugin - …_"), and it pushes the labels past what the project graph's boxes show
(pyworkflow cuts a box's text at 40 characters).
"""

from __future__ import annotations

PLUGIN_LABEL = "live2d"


class Live2DLabel:
    """Mixin of the plugin's protocols: "live2d - <label>" where Scipion would prepend the
    package name."""

    @classmethod
    def getClassLabel(cls, prependPackageName: bool = True) -> str:
        label = cls.__dict__.get("_label", cls.__name__)
        return f"{PLUGIN_LABEL} - {label}" if prependPackageName else label
