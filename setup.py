from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="live2d",
    version="0.1.0",
    description="Live 2D classification of cryo-EM particles while Warp is still collecting",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["live2d", "live2d.*", "live2d_plugin", "live2d_plugin.*"]),
    package_data={"live2d.server": ["static/*"],
                  "live2d_plugin": ["protocols.conf", "templates/*.json.template"]},
    install_requires=[
        # Versions chosen to coexist with scipion-em's pins (numpy 1.26, mrcfile <= 1.4.3).
        "numpy>=1.24,<2",
        "matplotlib>=3.5",  # the figures of live2d report
        "mrcfile>=1.4,<=1.4.3",
        "pandas>=1.5",
        "pillow>=9",
        "starfile>=0.5",
        "tornado>=6.2",
        "torch>=2.1",
        "torch-ctf>=0.6",
        "torch-fourier-rescale>=0.6",
        "torch-fourier-shift>=0.6",
        "torch-transform-image>=0.6",
    ],
    extras_require={
        "test": ["pytest>=7", "ruff>=0.5", "selenium>=4.10", "aiosmtpd>=1.4"],
        # scipion-app: the `scipion` launcher and the workflow-template dialog.
        "scipion": ["scipion-pyworkflow>=3.11", "scipion-em>=3.11", "scipion-app>=3.8"],
        "dask": ["dask[distributed]>=2024.1"],
        "cluster": ["dask[distributed]>=2024.1", "dask-jobqueue>=0.8"],
    },
    entry_points={
        "console_scripts": ["live2d = live2d.cli:main"],
        # Scipion finds its plugins through this group.
        "pyworkflow.plugin": ["live2d_plugin = live2d_plugin"],
    },
)
