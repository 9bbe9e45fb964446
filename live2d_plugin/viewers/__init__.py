"""The plugin's viewers, and the class-quality columns of Scipion's own viewer of classes."""

from pwem.objects import SetOfClasses2D
from pwem.viewers.showj import ORDER, VISIBLE
from pwem.viewers.viewers_data import RegistryViewerConfig

from live2d_plugin.convert import (
    AT_LIMIT_ATTRIBUTE,
    KEPT_ATTRIBUTE,
    REASON_ATTRIBUTE,
    RESOLUTION_ATTRIBUTE,
    SCORE_ATTRIBUTE,
    SELECTED_ATTRIBUTE,
)
from live2d_plugin.viewers.viewer_classify2d import Live2DViewer

__all__ = ["Live2DViewer", "show_class_quality"]
# After each class's size, in this order: what users read first, then why.
QUALITY_LABELS = (SELECTED_ATTRIBUTE, KEPT_ATTRIBUTE, SCORE_ATTRIBUTE, RESOLUTION_ATTRIBUTE,
                  AT_LIMIT_ATTRIBUTE, REASON_ATTRIBUTE)


def show_class_quality() -> None:
    """Make Scipion's viewer of 2D classes (the metadata viewer a double click on
    outputClasses opens) show Live2D's columns beside each class's size. Its set-up lists the
    columns it shows; classes of other programs have none of these, so they look the same."""
    config = dict(RegistryViewerConfig.getConfig(SetOfClasses2D) or {})
    for key in (VISIBLE, ORDER):
        labels = config.get(key, "").split()
        missing = [label for label in QUALITY_LABELS if label not in labels]
        if missing:
            at = labels.index("_size") + 1 if "_size" in labels else len(labels)
            labels[at:at] = missing
            config[key] = " ".join(labels)
    RegistryViewerConfig.registerConfig(SetOfClasses2D, config)


show_class_quality()
